"""The agent's cpio reader against images the builder's libarchive writer made (and an independent check)."""

import gzip
import io
import os
import subprocess

import newc_helpers as newc
import pytest

from agent import cpio
from beoboot.image.archive import write_image
from beoboot.image.compress import Compression
from beoboot.image.filelist import FileList, Reason

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


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../x", "/../x"])
def test_refuses_paths_that_leave_the_target(tmp_path, name):
    with pytest.raises(cpio.CpioError, match=r"at offset 0: its name leaves the target"):
        cpio.extract(io.BytesIO(newc.archive(newc.file(name, b"x"))), str(tmp_path / "root"))
    assert sorted(os.listdir(tmp_path)) == ["root"]


def test_truncated_archive_is_an_error(tmp_path):
    image, _ = make_image(tmp_path)
    data = gzip.decompress(image.read_bytes())[:5000]
    with pytest.raises(cpio.CpioError):
        cpio.extract(io.BytesIO(data), str(tmp_path / "x"))


# ---- hostile archives: nothing outside the target is created or changed --------------------------------


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path/root (the target) next to tmp_path/outside (a directory and a file the archive aims at)."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "secret").write_bytes(b"secret\n")
    os.chmod(outside, 0o755)
    return tmp_path


def snapshot(directory):
    """Everything about a tree that an escape could change (names, types, modes, links, bytes)."""
    seen = {}
    for path in sorted([directory, *directory.rglob("*")]):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path.relative_to(directory))] = (st.st_mode, st.st_nlink, st.st_ino, content)
    return seen


def unpack_members(root, *members):
    root.mkdir(exist_ok=True)
    return cpio.extract(io.BytesIO(newc.archive(*members)), str(root))


def test_file_through_a_symlinked_directory_is_refused(sandbox):
    before = snapshot(sandbox / "outside")
    with pytest.raises(cpio.CpioError, match=r"entry 'evil/x' at offset \d+: evil is not a directory"):
        unpack_members(sandbox / "root", newc.symlink("evil", str(sandbox / "outside")), newc.file("evil/x", b"pwned"))
    assert snapshot(sandbox / "outside") == before


def test_file_over_a_symlink_replaces_the_link(sandbox):
    before = snapshot(sandbox / "outside")
    root = sandbox / "root"
    unpack_members(root, newc.symlink("evil", str(sandbox / "outside/secret")), newc.file("evil", b"pwned"))
    assert snapshot(sandbox / "outside") == before
    assert not (root / "evil").is_symlink() and (root / "evil").read_bytes() == b"pwned"


def test_directory_over_a_symlink_replaces_the_link(sandbox):
    before = snapshot(sandbox / "outside")
    root = sandbox / "root"
    unpack_members(root, newc.symlink("evil", str(sandbox / "outside")), newc.directory("evil", 0o777))
    assert snapshot(sandbox / "outside") == before
    assert not (root / "evil").is_symlink() and oct((root / "evil").stat().st_mode & 0o7777) == oct(0o777)


def test_hard_link_through_a_symlinked_directory_is_refused(sandbox):
    before = snapshot(sandbox / "outside")
    with pytest.raises(cpio.CpioError, match="d is not a directory"):
        unpack_members(
            sandbox / "root",
            newc.symlink("d", str(sandbox / "outside")),
            newc.file("d/h", ino=9, nlink=2),
            newc.file("f", b"data", ino=9, nlink=2),
        )
    assert snapshot(sandbox / "outside") == before


def test_hard_link_group_whose_data_member_was_a_symlink_stays_inside(sandbox):
    """The member carrying the data has the name of an earlier symlink to an outside file: the link is
    replaced, and the group is linked to the file the unpacker made, never to what the link named."""
    before = snapshot(sandbox / "outside")
    root = sandbox / "root"
    unpack_members(
        root,
        newc.symlink("s", str(sandbox / "outside/secret")),
        newc.file("h", ino=7, nlink=2),
        newc.file("s", b"pwned", ino=7, nlink=2),
    )
    assert snapshot(sandbox / "outside") == before
    assert (root / "h").read_bytes() == (root / "s").read_bytes() == b"pwned"
    assert (root / "h").stat().st_ino == (root / "s").stat().st_ino != (sandbox / "outside/secret").stat().st_ino


def test_later_entry_replaces_an_earlier_one(tmp_path):
    root = tmp_path / "root"
    count = unpack_members(
        root,
        newc.symlink("l", "one"),
        newc.symlink("l", "two"),
        newc.file("f", b"old"),
        newc.file("f", b"new", 0o600),
        newc.directory("d", 0o700),
        newc.file("d/keep", b"k"),
        newc.directory("d", 0o750),
        newc.directory("e"),
        newc.file("e", b"was an empty directory"),
    )
    assert count == 9
    assert os.readlink(root / "l") == "two"
    assert (root / "f").read_bytes() == b"new" and oct((root / "f").stat().st_mode & 0o7777) == oct(0o600)
    assert (root / "d/keep").read_bytes() == b"k" and oct((root / "d").stat().st_mode & 0o7777) == oct(0o750)
    assert (root / "e").read_bytes() == b"was an empty directory"


def test_empty_hard_link_group_is_linked(tmp_path):
    root = tmp_path / "root"
    unpack_members(root, newc.file("a", ino=5, nlink=2), newc.file("b", ino=5, nlink=2))
    assert (root / "a").stat().st_ino == (root / "b").stat().st_ino and (root / "a").stat().st_nlink == 2


def test_hard_link_member_without_data_keeps_the_groups_data(tmp_path):
    root = tmp_path / "root"
    unpack_members(
        root,
        newc.file("a", b"data", ino=5, nlink=3),
        newc.file("b", ino=5, nlink=3),
        newc.file("c", b"new", ino=5, nlink=3),
    )
    assert (root / "a").read_bytes() == (root / "b").read_bytes() == (root / "c").read_bytes() == b"new"
    assert (root / "a").stat().st_nlink == 3


# ---- malformed input is a CpioError naming the entry and what is wrong ----------------------------------


def corrupt_gzip():
    return gzip.open(io.BytesIO(gzip.compress(newc.archive(newc.file("a", os.urandom(5000))))[:-300]))


def bad_header(field_index, value):
    raw = bytearray(newc.archive(newc.file("a", b"x")))
    raw[6 + 8 * field_index : 14 + 8 * field_index] = value
    return io.BytesIO(bytes(raw))


MALFORMED = {
    "non-hex field": (bad_header(1, b"zzzzzzzz"), r"header at offset 0 has a mode field that is not hex"),
    "signed field": (bad_header(6, b"+0000001"), r"header at offset 0 has a filesize field that is not hex"),
    "name not UTF-8": (newc.archive(newc.file(b"\xff\xfe", b"x")), r"entry at offset 0 has a name that is not UTF-8"),
    "NUL inside a name": (
        newc.archive(newc.file(b"a\0b", b"x")),
        r"offset 0 has a name that is not one NUL-terminated",
    ),
    "huge name size": (
        newc.header(b"a", ino=1, mode=0o100644, nlink=1, size=0, namesize=0xFFFFFFFF) + b"a\0",
        r"offset 0 has a name size of 4294967295",
    ),
    "file over a non-empty directory": (
        newc.archive(newc.directory("x"), newc.file("x/y"), newc.file("x", b"z")),
        r"entry 'x' at offset 228: it would replace a directory that is not empty",
    ),
    "symlink with no target": (
        newc.archive(newc.symlink("l", b"")),
        r"entry 'l' at offset 0: a symlink target of 0 bytes",
    ),
    "device number too big": (newc.archive(newc.chardev("c", 0xFFFFF, 1)), r"entry 'c' at offset 0: device number"),
    "fifo": (
        newc.archive(newc.Member("p", 0o010644)),
        r"entry 'p' at offset 0: a file type this agent does not unpack",
    ),
    "target is a file": (newc.archive(newc.file(".", b"x")), r"entry '.' at offset 0: it names the target directory"),
    "truncated data": (
        newc.archive(newc.file("big", b"x" * 1000))[:500],
        r"ends inside the data of entry 'big' at offset 0",
    ),
    "no trailer": (newc.encode(newc.file("a", b"x"), 1), r"ends inside an entry header \(offset 116\)"),
    "corrupt gzip": (None, r"cannot read the data of entry 'a' at offset 0"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_archive_is_a_cpio_error(tmp_path, case):
    data, message = MALFORMED[case]
    stream = corrupt_gzip() if data is None else data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    with pytest.raises(cpio.CpioError, match=message):
        cpio.extract(stream, str(tmp_path / "root"))
    assert sorted(os.listdir(tmp_path)) == ["root"]


# ---- modes are the header's, whatever the umask ----------------------------------------------------------


def test_modes_are_exactly_the_headers_whatever_the_umask(tmp_path):
    root = tmp_path / "root"
    old = os.umask(0o077)
    try:
        unpack_members(
            root,
            newc.directory(".", 0o755),
            newc.directory("dev"),
            newc.chardev("dev/null", 1, 3, 0o666),
            newc.directory("a/b", 0o755),
            newc.file("suid", b"x", 0o4755),
            newc.directory("tmp", 0o1777),
            newc.directory("sgid", 0o2750),
            newc.directory("sgid/plain", 0o755),
            newc.file("sgid/plain/f", b"y", 0o644),
        )
    finally:
        os.umask(old)
    modes = {
        p: oct(os.lstat(root / p).st_mode & 0o7777)
        for p in ("dev", "dev/null", "a", "a/b", "suid", "tmp", "sgid", "sgid/plain", "sgid/plain/f")
    }
    assert modes == {
        p: oct(m)
        for p, m in {
            "dev": 0o755,
            "dev/null": 0o666,
            "a": 0o755,
            "a/b": 0o755,
            "suid": 0o4755,
            "tmp": 0o1777,
            "sgid": 0o2750,
            "sgid/plain": 0o755,
            "sgid/plain/f": 0o644,
        }.items()
    }
    assert os.stat(root / "dev/null").st_rdev == os.makedev(1, 3)
