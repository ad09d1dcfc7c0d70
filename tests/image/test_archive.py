"""Reproducible cpio images, checked with independent tools (GNU cpio, bsdtar) as well as read_image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beoboot.errors import ImageError, SysrootError
from beoboot.image import archive
from beoboot.image.archive import (
    InodePlan,
    UnrepresentableError,
    build_cpio,
    extract_file,
    plan_inodes,
    read_image,
    write_image,
)
from beoboot.image.compress import Compression
from beoboot.image.filelist import Entry, FileList, Kind, Reason

MTIME = 1_700_000_000
REASON = Reason("test")

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio (apt-get install cpio)")
needs_bsdtar = pytest.mark.skipif(
    shutil.which("bsdtar") is None, reason="needs bsdtar (apt-get install libarchive-tools)"
)


def sample_filelist(src: Path) -> FileList:
    """Files, a hard link pair (plus the same source added twice), generated data, a symlink, devices."""
    (src / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (src / "tool").chmod(0o755)
    if not (src / "tool-link").exists():
        os.link(src / "tool", src / "tool-link")
    (src / "lonely").write_bytes(b"x" * 5000)
    files = FileList()
    files.add_file("/usr/bin/tool", src / "tool", REASON)
    files.add_file("/usr/bin/tool-alias", src / "tool-link", REASON)
    files.add_file("/sbin/tool", src / "tool", REASON)
    files.add_file("/usr/share/lonely", src / "lonely", REASON)
    files.add_bytes("/etc/beoboot.json", b'{"stage": 1}\n', REASON)
    files.add_symlink("/bin", "usr/bin", REASON)
    files.add_chardev("/dev/console", 5, 1, REASON)
    files.add_chardev("/dev/null", 1, 3, REASON, mode=0o666)
    files.add_dir("/proc", REASON, mode=0o555)
    return files


@pytest.fixture
def files(tmp_path: Path) -> FileList:
    src = tmp_path / "src"
    src.mkdir()
    return sample_filelist(src)


# ---- plan_inodes: pure, table-tested ----------------------------------------------------------------


def _file(path: str, source: str | None = None, mode: int = 0o644, data: bytes | None = None) -> Entry:
    return Entry(path, Kind.FILE, mode, REASON, source=source, data=data)


IDENTITIES = {"/h/a": (1, 100), "/h/a2": (1, 100), "/h/b": (1, 200), "/h/other-dev": (2, 100)}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(
            [Entry("/", Kind.DIR, 0o755, REASON), _file("/a", "/h/a"), _file("/b", "/h/b")],
            {"/": InodePlan(1, 2), "/a": InodePlan(2, 1), "/b": InodePlan(3, 1)},
            id="no links: sequential inodes",
        ),
        pytest.param(
            [_file("/x", "/h/a"), _file("/y", "/h/b"), _file("/z", "/h/a2")],
            {"/x": InodePlan(1, 2, carries_data=False), "/y": InodePlan(2, 1), "/z": InodePlan(1, 2)},
            id="one inode twice: shared inode, data on the last",
        ),
        pytest.param(
            [_file("/x", "/h/a"), _file("/y", "/h/a", mode=0o755)],
            {"/x": InodePlan(1, 1), "/y": InodePlan(2, 1)},
            id="different modes cannot share an inode",
        ),
        pytest.param(
            [_file("/x", "/h/a"), _file("/y", "/h/other-dev")],
            {"/x": InodePlan(1, 1), "/y": InodePlan(2, 1)},
            id="same st_ino on another device is another file",
        ),
        pytest.param(
            [_file("/x", data=b"1"), _file("/y", data=b"1")],
            {"/x": InodePlan(1, 1), "/y": InodePlan(2, 1)},
            id="generated files are never linked",
        ),
    ],
)
def test_plan_inodes(entries: list[Entry], expected: dict[str, InodePlan]) -> None:
    assert plan_inodes(entries, IDENTITIES.__getitem__) == expected


# ---- writing and reading back -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Compression))
def test_read_image_round_trip(files: FileList, tmp_path: Path, kind: Compression) -> None:
    image = tmp_path / "image"
    stats = write_image(files, image, kind, MTIME)
    assert stats.entries == len(files)
    assert stats.compressed_size == image.stat().st_size
    listed = {entry.path: entry for entry in read_image(image)}
    assert list(listed) == [entry.path for entry in files.entries()]
    assert listed["/"].kind == Kind.DIR
    assert listed["/proc"].mode == 0o555
    assert listed["/usr/bin/tool"].mode == 0o755
    assert listed["/bin"].target == "usr/bin"
    assert listed["/dev/console"].rdev == (5, 1)
    assert listed["/dev/null"].rdev == (1, 3) and listed["/dev/null"].mode == 0o666
    assert listed["/etc/beoboot.json"].data() == b'{"stage": 1}\n'
    for path in ("/sbin/tool", "/usr/bin/tool", "/usr/bin/tool-alias"):
        assert listed[path].data() == b"#!/bin/sh\necho tool\n"
        assert listed[path].nlink == 3 and listed[path].ino == listed["/sbin/tool"].ino
    assert extract_file(image, "usr/share/lonely") == b"x" * 5000


def test_image_is_byte_identical_across_umask_and_tz(tmp_path: Path) -> None:
    """Two builds in separate processes, from separately created sources, with different umask and TZ."""
    script = (
        "import sys, pathlib, test_archive as t\n"
        "src = pathlib.Path(sys.argv[1]); src.mkdir()\n"
        "t.write_image(t.sample_filelist(src), sys.argv[2], t.Compression.GZIP, t.MTIME)\n"
    )
    outputs = []
    for index, (umask, tz) in enumerate([("0022", "UTC"), ("0077", "America/New_York")]):
        out = tmp_path / f"image{index}"
        env = {**os.environ, "TZ": tz, "PYTHONPATH": str(Path(__file__).parent)}
        subprocess.run(
            [
                "sh",
                "-c",
                f'umask {umask} && exec "$0" -c "$1" "$2" "$3"',
                sys.executable,
                script,
                str(tmp_path / f"src{index}"),
                str(out),
            ],
            env=env,
            check=True,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert oct((tmp_path / "image1").stat().st_mode & 0o777) == oct(0o644)


def test_no_host_inode_leaks(files: FileList, tmp_path: Path) -> None:
    cpio, _ = build_cpio(files, MTIME)
    inodes = {entry.ino for entry in archive.list_cpio(cpio)}
    assert inodes == set(range(1, len(inodes) + 1))


@needs_cpio
def test_gnu_cpio_lists_and_extracts_hard_links(files: FileList, tmp_path: Path) -> None:
    image = tmp_path / "image.cpio"
    write_image(files, image, Compression.NONE, MTIME)
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], stdin=image.open("rb"), capture_output=True, text=True, check=True
    )
    assert listing.stdout.splitlines() == [archive.archive_name(e.path).decode() for e in files.entries()]

    out = tmp_path / "out"
    out.mkdir()
    # --no-absolute-filenames keeps it inside `out`; device nodes need root, so they may be refused
    # when the test runs unprivileged: only files, links and directories are checked here.
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=out, stdin=image.open("rb"), check=False)
    tool, alias, sbin = (out / p for p in ("usr/bin/tool", "usr/bin/tool-alias", "sbin/tool"))
    assert tool.stat().st_ino == alias.stat().st_ino == sbin.stat().st_ino
    assert tool.stat().st_nlink == 3
    assert tool.read_bytes() == b"#!/bin/sh\necho tool\n"
    assert tool.stat().st_mtime == MTIME
    assert os.readlink(out / "bin") == "usr/bin"
    assert (out / "usr/share/lonely").stat().st_ino != tool.stat().st_ino


@needs_bsdtar
def test_bsdtar_lists_devices_links_and_owners(files: FileList, tmp_path: Path) -> None:
    image = tmp_path / "image.zst"
    write_image(files, image, Compression.ZSTD, MTIME)
    listing = subprocess.run(["bsdtar", "-tvf", str(image)], capture_output=True, text=True, check=True).stdout
    # mode nlink uid gid size-or-"major,minor" month day year name [-> target | link to name]
    lines = {fields[8]: fields for fields in map(str.split, listing.splitlines())}
    assert lines["dev/console"][0].startswith("c") and lines["dev/console"][4] == "5,1"
    assert lines["dev/null"][0] == "crw-rw-rw-" and lines["dev/null"][4] == "1,3"
    assert all(fields[2:4] == ["0", "0"] for fields in lines.values())
    assert "usr/bin/tool-alias link to sbin/tool" in listing
    assert "bin -> usr/bin" in listing


def test_failed_write_leaves_no_file(files: FileList, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"previous image")

    def broken_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_image(files, image, Compression.GZIP, MTIME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image", "src"]
    assert image.read_bytes() == b"previous image"


def test_missing_source_is_named(tmp_path: Path) -> None:
    files = FileList()
    files.add(Entry("/gone", Kind.FILE, 0o644, REASON, source=str(tmp_path / "gone")))
    with pytest.raises(SysrootError, match="cannot read source file .*gone"):
        write_image(files, tmp_path / "image", Compression.NONE, MTIME)
    assert not (tmp_path / "image").exists()


def test_extract_file_errors_name_the_path(files: FileList, tmp_path: Path) -> None:
    image = tmp_path / "image"
    write_image(files, image, Compression.LZ4, MTIME)
    with pytest.raises(ImageError, match="/nope is not in"):
        extract_file(image, "/nope")
    with pytest.raises(ImageError, match="/bin in .* is a symlink"):
        extract_file(image, "/bin")


def test_read_image_rejects_garbage(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF not an image")
    with pytest.raises(ImageError, match="7f454c46"):
        read_image(junk)


def _unrepresentable(case: str, tmp_path: Path) -> tuple[FileList, int]:
    files, mtime = FileList(), MTIME
    if case == "mtime after 2106":
        files.add_bytes("/a", b"x", REASON)
        mtime = 99_999_999_999
    elif case == "negative mtime":
        files.add_bytes("/a", b"x", REASON)
        mtime = -1
    elif case == "NUL in a name":
        files.add_bytes("/etc/a\0b", b"x", REASON)
    elif case == "name not UTF-8":
        files.add_bytes(os.fsdecode(b"/etc/caf\xe9"), b"x", REASON)
    elif case == "'..' in a name":
        files._entries["/../etc/x"] = Entry("/../etc/x", Kind.FILE, 0o644, REASON, data=b"x")  # FileList.add normalises
    elif case == "relative name":
        files._entries["etc/x"] = Entry("etc/x", Kind.FILE, 0o644, REASON, data=b"x")
    elif case == "name too long":
        files.add_bytes("/" + "/".join(["d" * 200] * 21), b"x", REASON)
    elif case == "NUL in a symlink target":
        files.add_symlink("/l", "a\0b", REASON)
    elif case == "empty symlink target":
        files.add_symlink("/l", "", REASON)
    elif case == "device number too big":
        files.add_chardev("/dev/x", 1 << 12, 0, REASON)
    elif case == "mode beyond permission bits":
        files.add_bytes("/a", b"x", REASON, mode=0o100644)
    elif case == "file inside a symlink":
        files.add_symlink("/lib", "usr/lib", REASON)
        files.add_bytes("/lib/x", b"x", REASON)
    elif case == "file over 4 GiB":
        big = tmp_path / "big"
        with big.open("wb") as f:
            f.truncate((1 << 32) + 1)  # sparse: the writer must refuse it from its size, without reading it
        files.add_file("/big", big, REASON)
    return files, mtime


UNREPRESENTABLE = {
    "mtime after 2106": "mtime 99999999999 .*does not fit a newc header",
    "negative mtime": "mtime -1 ",
    "NUL in a name": r"'/etc/a\\x00b'.*: its path has a NUL byte",
    "name not UTF-8": r"'/etc/caf\\udce9'.*: its path is not UTF-8",
    "'..' in a name": r"'/../etc/x'.*: its path is not a normalised absolute path",
    "relative name": r"'etc/x'.*: its path is not a normalised absolute path",
    "name too long": r"its path is 4220 bytes \(at most 4095\)",
    "NUL in a symlink target": r"'/l'.*: its symlink target has a NUL byte",
    "empty symlink target": r"'/l'.*: its symlink target is 0 bytes",
    "device number too big": r"'/dev/x'.*: device number 4096:0 does not fit",
    "mode beyond permission bits": r"'/a'.*: mode 0o100644 is not permission bits",
    "file inside a symlink": r"'/lib/x'.*: its parent /lib is a symlink in this image",
    "file over 4 GiB": r"'/big' \(from .*big\).*: it is 4294967297 bytes",
}


@pytest.mark.parametrize("case", list(UNREPRESENTABLE))
def test_writer_refuses_what_newc_or_the_node_cannot_hold(tmp_path: Path, case: str) -> None:
    files, mtime = _unrepresentable(case, tmp_path)
    with pytest.raises(UnrepresentableError, match=UNREPRESENTABLE[case]):
        write_image(files, tmp_path / "image", Compression.NONE, mtime)
    assert not (tmp_path / "image").exists()


@pytest.mark.integration
def test_kernel_unpacks_hard_links(tmp_path: Path) -> None:
    """/init and /sbin/init are one inode; newc puts the data on /sbin/init (the last member), so the
    kernel can run /init only if it linked the two and filled in the data through the link."""
    from test_compress import MARKER, boot_initramfs, build_tiny_init, kernel_image

    kernel = kernel_image()
    if kernel is None or shutil.which("qemu-system-x86_64") is None or shutil.which("gcc") is None:
        pytest.skip("needs a kernel in /boot, qemu-system-x86_64 and gcc")
    init = build_tiny_init(tmp_path)
    files = FileList()
    files.add_file("/init", init, REASON, mode=0o755)
    files.add_file("/sbin/init", init, REASON, mode=0o755)
    files.add_chardev("/dev/console", 5, 1, REASON)
    image = tmp_path / "initrd"
    write_image(files, image, Compression.GZIP, MTIME)
    listed = {entry.path: entry for entry in read_image(image)}
    assert listed["/init"].nlink == 2 and listed["/init"].ino == listed["/sbin/init"].ino
    console = boot_initramfs(kernel, image)
    assert MARKER in console, console[-3000:]


# ---- images in parts: own entries, then shared chunks, each compressed once -------------------------


def _under_usr(entry: Entry) -> bool:
    return entry.path.startswith("/usr/")


@pytest.mark.parametrize("kind", list(Compression))
def test_image_in_parts_reads_back_whole(files: FileList, tmp_path: Path, kind: Compression) -> None:
    image = tmp_path / "image"
    write_image(files, image, kind, MTIME, shared=_under_usr)
    assert len(archive.split_archives(archive.decompress(image.read_bytes()))) == 2
    listed = {entry.path: entry for entry in read_image(image)}
    assert sorted(listed) == sorted(entry.path for entry in files.entries())
    # the own part comes first and holds every directory, so the later part unpacks into them
    order = [entry.path for entry in read_image(image)]
    assert order.index("/usr/bin") < order.index("/usr/bin/tool")
    assert listed["/usr/bin/tool"].data() == listed["/sbin/tool"].data() == b"#!/bin/sh\necho tool\n"
    assert listed["/usr/bin/tool-alias"].nlink == 2  # linked within its part; /sbin/tool is in the other
    assert extract_file(image, "usr/share/lonely") == b"x" * 5000


def test_shared_chunks_are_identical_and_compressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for index in range(6):
        (src / f"lib{index}").write_bytes(os.urandom(3000))
    monkeypatch.setattr(archive, "SHARED_CHUNK", 5000)  # two files a chunk
    compressed: list[int] = []
    real_compress = archive.compress
    monkeypatch.setattr(archive, "compress", lambda data, *a: compressed.append(len(data)) or real_compress(data, *a))
    images = []
    with ThreadPoolExecutor(2) as pool:
        compressor = archive.PartCompressor(pool)
        for stage in (1, 2):
            files = FileList()
            for index in range(6):
                files.add_file(f"/usr/lib/lib{index}", src / f"lib{index}", REASON)
            files.add_bytes("/etc/stage", f"{stage}\n".encode(), REASON)
            images.append(tmp_path / f"stage{stage}")
            write_image(files, images[-1], Compression.XZ, MTIME, shared=_under_usr, compressor=compressor)
    parts = [archive.split_archives(archive.decompress(image.read_bytes())) for image in images]
    assert [len(p) for p in parts] == [4, 4]
    assert parts[0][0] != parts[1][0] and parts[0][1:] == parts[1][1:]
    assert len(compressed) == 5  # two own parts, three chunks both images share
    one, two = (image.read_bytes() for image in images)
    assert one[-1000:] == two[-1000:]  # the same compressed bytes, not merely the same content


def test_split_archives_refuses_a_cut_image(files: FileList, tmp_path: Path) -> None:
    cpio, _ = build_cpio(files, MTIME)
    assert archive.split_archives(cpio + b"\0" * 8 + cpio) == [cpio, cpio]
    with pytest.raises(ImageError, match="ends inside"):
        archive.split_archives(cpio[:-200])
    with pytest.raises(ImageError, match="no newc cpio header"):
        archive.split_archives(cpio + b"junk")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 599))
def test_split_archives_fails_closed(junk: bytes, cut: int) -> None:
    """Any bytes: a list of archives or an ImageError, never another exception."""
    files = FileList()
    files.add_bytes("/a", b"x" * 40, REASON)
    cpio, _ = build_cpio(files, MTIME)
    for data in (junk, cpio[:cut] + junk, cpio + junk):
        try:
            archive.split_archives(data)
        except ImageError:
            pass
