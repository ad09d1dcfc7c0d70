"""agent.download against a real HTTP server on loopback that is busy: a 503 with Retry-After is waited out
(capped, never less than asked) and retried without counting as a failure, and the bytes received before
it are kept (Range, If-Range)."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.download import BUSY_JITTER, DownloadError, fetch
from agent.httpclient import RETRY_AFTER_MAX, retry_after

DATA = os.urandom(300_000)
ETAG = '"v1"'
CUT = 100_000  # where the first answer breaks off


class Script(http.server.BaseHTTPRequestHandler):
    """Answers each GET with the next step of the server's script; records the Range each one carried."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, ScriptedServer)
        server.ranges.append(self.headers.get("Range"))
        step = server.steps.pop(0)
        if step == "cut":  # the whole file announced, a third of it sent, then the connection drops
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.send_header("ETag", ETAG)
            self.end_headers()
            self.wfile.write(DATA[:CUT])
            self.close_connection = True
        elif step.startswith("busy"):
            body = b'{"error": "retry shortly"}'
            self.send_response(503)
            if step != "busy":
                self.send_header("Retry-After", step.removeprefix("busy "))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif step == "rest":  # the Range asked for, if the validator is this version's
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            assert self.headers["If-Range"] == ETAG
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
            self.send_header("Content-Length", str(len(DATA) - start))
            self.send_header("ETag", ETAG)
            self.end_headers()
            self.wfile.write(DATA[start:])

    def log_message(self, format: str, *args: object) -> None:
        pass


class ScriptedServer(http.server.ThreadingHTTPServer):
    def __init__(self, steps: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), Script)
        self.steps = steps
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/stage3.cpio"


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(steps: list[str]) -> ScriptedServer:
        server = ScriptedServer(steps)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_busy_master_is_waited_out_and_the_bytes_received_are_kept(serve, tmp_path):
    server = serve(["cut", "busy 2", "busy 3", "rest"])
    sleeps: list[float] = []
    said: list[str] = []
    dest = str(tmp_path / "stage3.cpio")
    # two attempts: the broken transfer is one; the 503s, had they counted, would have been the second
    got = fetch(server.url, dest, hashlib.sha256(DATA).hexdigest(), attempts=2, sleep=sleeps.append, log=said.append)
    assert got == hashlib.sha256(DATA).hexdigest() and open(dest, "rb").read() == DATA
    assert server.ranges == [None, f"bytes={CUT}-", f"bytes={CUT}-", f"bytes={CUT}-"]
    assert len(sleeps) == 3
    assert 2 <= sleeps[1] <= 2 * (1 + BUSY_JITTER) and 3 <= sleeps[2] <= 3 * (1 + BUSY_JITTER)
    assert "master is busy" in said[1] and "not counted as a failure" in said[1]
    assert not os.path.exists(dest + ".part")


def test_a_503_without_retry_after_is_a_failure_like_any_other(serve, tmp_path):
    server = serve(["busy", "busy"])
    with pytest.raises(DownloadError, match="HTTP 503"):
        fetch(server.url, str(tmp_path / "f"), None, attempts=2, sleep=lambda s: None, log=lambda s: None)
    assert len(server.ranges) == 2


def test_a_long_retry_after_is_capped(serve, tmp_path):
    server = serve(["busy 86400", "rest"])
    (tmp_path / "f.part").write_bytes(DATA[:CUT])  # an earlier boot's part, with its validator
    (tmp_path / "f.part.validator").write_text(ETAG)
    sleeps: list[float] = []
    fetch(server.url, str(tmp_path / "f"), None, attempts=1, sleep=sleeps.append, log=lambda s: None)
    assert sleeps == [RETRY_AFTER_MAX] and (tmp_path / "f").read_bytes() == DATA


@given(st.text(max_size=40))
def test_retry_after_of_any_text_is_none_or_within_the_cap(text):
    seconds = retry_after(text)
    assert seconds is None or 0 <= seconds <= RETRY_AFTER_MAX


@given(st.integers(0, 10**30))
def test_retry_after_in_seconds(n):
    assert retry_after(str(n)) == min(n, RETRY_AFTER_MAX)
    assert retry_after(f" {n} ") == min(n, RETRY_AFTER_MAX)


def test_retry_after_as_a_date():
    now = time.time()
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now=lambda: now) == pytest.approx(30, abs=1)
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now=lambda: now) == 0
    assert retry_after("", now=lambda: now) is None and retry_after("-5") is None and retry_after("1.5") is None
