"""The agent's downloader against a real HTTP server (nginx on loopback): resume, If-Range, hash pins."""

import hashlib
import os

import pytest
import requests
from servers import access_log_statuses, free_port, nginx

from agent.download import Backoff, DownloadError, IntegrityError, fetch

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(3 * 2**20)
    (root / "stage3.cpio.gz").write_bytes(data)
    with nginx(root, tmp_path / "nginx") as url:
        yield url, data, root, tmp_path / "nginx"


def test_fetch_checks_the_pinned_hash(served, tmp_path):
    url, data, _, _ = served
    dest = str(tmp_path / "got")
    assert (
        fetch(url + "stage3.cpio.gz", dest, hashlib.sha256(data).hexdigest(), attempts=1)
        == hashlib.sha256(data).hexdigest()
    )
    assert open(dest, "rb").read() == data
    assert not os.path.exists(dest + ".part")


def test_a_file_altered_by_one_byte_is_refused_and_never_left_in_place(served, tmp_path):
    url, data, root, _ = served
    altered = bytearray(data)
    altered[1000] ^= 1
    (root / "stage3.cpio.gz").write_bytes(bytes(altered))
    dest = str(tmp_path / "got")
    lines = []
    with pytest.raises(IntegrityError, match="does not match the pinned"):
        fetch(
            url + "stage3.cpio.gz",
            dest,
            hashlib.sha256(data).hexdigest(),
            attempts=2,
            log=lines.append,
            sleep=lambda s: None,
        )
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    assert any("does not match" in line and "retry 1" in line for line in lines)


def test_interrupted_download_resumes_with_range_and_if_range(served, tmp_path):
    url, data, _, workdir = served
    dest = str(tmp_path / "got")
    etag = requests.head(url + "stage3.cpio.gz").headers["ETag"]
    with open(dest + ".part", "wb") as f:  # what an interrupted first attempt leaves behind
        f.write(data[:1_000_000])
    with open(dest + ".part.validator", "w") as f:
        f.write(etag)
    fetch(url + "stage3.cpio.gz", dest, hashlib.sha256(data).hexdigest(), attempts=1)
    assert open(dest, "rb").read() == data
    assert access_log_statuses(workdir)[-1] == 206


def test_resume_of_a_file_that_changed_starts_over(served, tmp_path):
    url, data, root, workdir = served
    dest = str(tmp_path / "got")
    with open(dest + ".part", "wb") as f:
        f.write(b"x" * 1_000_000)
    with open(dest + ".part.validator", "w") as f:
        f.write('"old-version-etag"')
    fetch(url + "stage3.cpio.gz", dest, hashlib.sha256(data).hexdigest(), attempts=1)
    assert open(dest, "rb").read() == data
    assert access_log_statuses(workdir)[-1] == 200


def test_unreachable_master_retries_with_growing_delays(tmp_path):
    waits = []
    with pytest.raises(DownloadError):
        fetch(
            f"http://127.0.0.1:{free_port()}/x",
            str(tmp_path / "x"),
            None,
            attempts=4,
            sleep=waits.append,
            log=lambda line: None,
            backoff=Backoff(first=1, jitter=0.25),
        )
    assert len(waits) == 3
    assert 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5 and 3 <= waits[2] <= 5


@pytest.mark.parametrize("attempt, rand, expected", [(0, 0.5, 1.0), (1, 0.0, 1.5), (2, 1.0, 5.0), (10, 0.5, 30.0)])
def test_backoff_schedule(attempt, rand, expected):
    assert Backoff(first=1, cap=30, jitter=0.25).delay(attempt, lambda: rand) == pytest.approx(expected)
