"""The agent's cpio reader against images the builder's libarchive writer made (and an independent check)."""

import gzip
import io
import os
import subprocess

import pytest

from agent import cpio
from beoboot.archive import write_image
from beoboot.compress import Compression
from beoboot.filelist import FileList, Reason

WHY = Reason("test")


def make_image(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(300_000))
    os.link(src / "big", src / "big-link")
    files = FileList()
    files.add_bytes("/etc/hostname", b"node\n", WHY)
    files.add_bytes("/init", b"#!/x\n", WHY, mode=0o755)
    files.add_file("/usr/lib/big", src / "big", WHY)
    files.add_file("/usr/lib/big-link", src / "big-link", WHY)
    files.add_symlink("/lib", "usr/lib", WHY)
    files.add_dir("/tmp", WHY, mode=0o1777)
    out = tmp_path / "image.cpio.gz"
    write_image(files, out, Compression.GZIP, 1700000000)
    return out, src


def test_extracts_what_the_builder_wrote(tmp_path):
    image, src = make_image(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    with gzip.open(image) as stream:
        count = cpio.extract(stream, str(root))
    assert count >= 8
    assert (root / "etc/hostname").read_bytes() == b"node\n"
    assert os.access(root / "init", os.X_OK)
    assert os.readlink(root / "lib") == "usr/lib"
    assert (root / "usr/lib/big").read_bytes() == (src / "big").read_bytes()
    assert os.stat(root / "usr/lib/big").st_ino == os.stat(root / "usr/lib/big-link").st_ino
    assert oct(os.stat(root / "tmp").st_mode & 0o7777) == oct(0o1777)


def test_matches_gnu_cpio_listing(tmp_path):
    image, _ = make_image(tmp_path)
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress(image.read_bytes()), capture_output=True)
    names = {n.lstrip("./") for n in listing.stdout.decode().split()}
    with gzip.open(image) as stream:
        ours = {h.name.lstrip("./") for h, _ in cpio.entries(stream)}
    assert ours == names


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../x"])
def test_refuses_paths_that_leave_the_target(name):
    with pytest.raises(cpio.CpioError, match="leaves"):
        cpio.safe_join("/newroot", name)


def test_truncated_archive_is_an_error(tmp_path):
    image, _ = make_image(tmp_path)
    data = gzip.decompress(image.read_bytes())[:5000]
    with pytest.raises(cpio.CpioError):
        cpio.extract(io.BytesIO(data), str(tmp_path / "x"))
