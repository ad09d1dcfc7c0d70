"""Fuzzing the node's cpio unpacker (agent/cpio.py) and the builder's writer (beoboot/image/archive.py).

Any bytes, and any archive built from hostile entry lists (`..`, links to the outside, a name used twice,
hard links, setuid modes), unpack to success or a CpioError, in bounded time, and never create or change
anything outside the target: the target sits in a sandbox next to a sentinel directory and a sibling
file, which must be exactly as they were. And whatever the writer writes, the unpacker gives back.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import newc_helpers as newc
from hypothesis import given
from hypothesis import strategies as st

from agent import cpio
from beoboot.image.archive import build_cpio
from beoboot.image.filelist import FileList, Kind, Reason

SECONDS = 10  # far above what any of these inputs needs: a hang or a quadratic blow-up shows
MTIME = 1_700_000_000
WHY = Reason("fuzz")


class Sandbox:
    """sandbox/sentinel/{secret, sub/} and sandbox/outer/{sibling, target/}: links in archives aim at the
    sentinel and the sibling, and `..` from the target lands in outer/ (never above the sandbox, so a
    broken unpacker damages nothing but the sandbox)."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="cpio-fuzz-"))
        (self.top / "sentinel/sub").mkdir(parents=True)
        (self.top / "sentinel/secret").write_bytes(b"secret\n")
        (self.top / "outer").mkdir()
        (self.top / "outer/sibling").write_bytes(b"sibling\n")
        self.target = self.top / "outer/target"
        self.target.mkdir()
        self.before = self.outside()

    def outside(self) -> dict[str, tuple[object, ...]]:
        seen = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            if Path(dirpath) == self.target.parent:
                dirnames.remove("target")
            for name in ["", *dirnames, *filenames]:
                path = Path(dirpath, name)
                s = path.lstat()
                content = path.read_bytes() if stat.S_ISREG(s.st_mode) else None
                seen[str(path)] = (
                    s.st_mode,
                    s.st_nlink,
                    s.st_ino,
                    s.st_uid,
                    s.st_gid,
                    s.st_mtime_ns,
                    s.st_ctime_ns,
                    content,
                )
        return seen

    def check(self) -> None:
        assert self.outside() == self.before, "the unpacker changed something outside its target"
        outside_inodes = {value[2] for value in self.before.values()}
        for dirpath, dirnames, filenames in os.walk(self.target):  # never follows a link
            for name in [*dirnames, *filenames]:
                path = Path(dirpath, name)
                assert os.path.realpath(path.parent).startswith(str(self.target)), path
                assert path.lstat().st_ino not in outside_inodes, f"{path} is a hard link to a file outside"

    def remove(self) -> None:
        shutil.rmtree(self.top)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def unpack_in_sandbox(data: bytes) -> None:
    sandbox = Sandbox()
    fds = open_fds()
    try:
        started = time.monotonic()
        try:
            cpio.extract(io.BytesIO(data), str(sandbox.target))
        except cpio.CpioError as e:
            assert "offset" in str(e) or "target directory" in str(e), e
        assert time.monotonic() - started < SECONDS
        assert open_fds() == fds, "a descriptor was left open"
        sandbox.check()
    finally:
        sandbox.remove()


# ---- hostile entry lists -----------------------------------------------------------------------------

# Mostly a few plain names, so that a link and a later entry through it or over it are common.
COMPONENTS = st.sampled_from(["a", "b", "evil", "..", ".", ""])
NAMES = st.one_of(
    st.sampled_from(["a", "a/b", "a/b/c", "b"]),
    st.builds(
        lambda lead, parts: lead + "/".join(parts),
        st.sampled_from(["", "./", "/"]),
        st.lists(COMPONENTS, min_size=1, max_size=3),
    ),
)


# "@..." are placeholders for the sandbox's paths, only known when an example runs.
OUTSIDE_TARGETS = st.sampled_from(
    ["@sentinel", "@secret", "@sibling", "../../sentinel", "../../sentinel/secret", "..", "../..", "../sibling"]
)
LINK_TARGETS = st.one_of(OUTSIDE_TARGETS, st.sampled_from([".", "a", "evil", "a/b"]))


MODES = st.one_of(st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o7777]), st.integers(0, 0o7777))
MEMBERS = st.one_of(
    st.builds(newc.file, NAMES, st.binary(max_size=64), MODES),
    st.builds(
        lambda n, i, d, m: newc.file(n, d, m, ino=i, nlink=2), NAMES, st.integers(1, 3), st.binary(max_size=8), MODES
    ),
    st.builds(newc.directory, NAMES, MODES),
    st.builds(newc.symlink, NAMES, LINK_TARGETS),
    st.builds(newc.chardev, NAMES, st.just(1), st.sampled_from([3, 5]), MODES),
    st.builds(lambda n: newc.Member(n, stat.S_IFIFO | 0o644), NAMES),
)


def with_sandbox_paths(member: newc.Member, top: Path) -> newc.Member:
    if stat.S_ISLNK(member.mode) and member.data.startswith(b"@"):
        where = {b"@sentinel": "sentinel", b"@secret": "sentinel/secret", b"@sibling": "outer/sibling"}[member.data]
        return newc.symlink(member.name, str(top / where))
    return member


def _through(link: newc.Member, later: newc.Member, below: bool) -> list[newc.Member]:
    name = f"{link.name}/{later.name}" if below else link.name
    return [link, newc.Member(name, later.mode, later.data, later.ino, later.nlink, later.rdev)]


# A link, then an entry of its name or below it: the sequences that write through links.
LINK_THEN_ENTRY = st.builds(_through, st.builds(newc.symlink, NAMES, OUTSIDE_TARGETS), MEMBERS, st.booleans())
HOSTILE = st.lists(st.one_of(MEMBERS.map(lambda member: [member]), LINK_THEN_ENTRY), max_size=8).map(
    lambda units: [member for unit in units for member in unit]
)


@given(HOSTILE)
def test_hostile_entry_lists_stay_inside_the_target(members: list[newc.Member]) -> None:
    sandbox = Sandbox()
    fds = open_fds()
    try:
        data = newc.archive(*(with_sandbox_paths(m, sandbox.top) for m in members))
        started = time.monotonic()
        try:
            cpio.extract(io.BytesIO(data), str(sandbox.target))
        except cpio.CpioError as e:
            assert "at offset" in str(e), e
        assert time.monotonic() - started < SECONDS
        assert open_fds() == fds, "a descriptor was left open"
        sandbox.check()
    finally:
        sandbox.remove()


# ---- arbitrary bytes, and valid archives with bytes changed ------------------------------------------


@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_unpacked_or_refused(data: bytes) -> None:
    unpack_in_sandbox(data)


@given(
    st.lists(MEMBERS, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)), max_size=4),
)
def test_damaged_archives_are_unpacked_or_refused(members: list[newc.Member], damage: list[tuple[int, bytes]]) -> None:
    data = bytearray(newc.archive(*members))
    for position, replacement in damage:
        position %= len(data)
        data[position : position + len(replacement)] = replacement
    unpack_in_sandbox(bytes(data))


# ---- round trip: what the writer writes, the unpacker gives back ---------------------------------------

SEGMENT = st.sampled_from(["a", "b", "c", "bin", "d e", "ü"])
TREE = st.dictionaries(
    st.lists(SEGMENT, min_size=1, max_size=3).map(tuple),
    st.one_of(
        st.tuples(st.just("file"), st.binary(max_size=300), MODES),
        st.tuples(st.just("dir"), st.just(b""), MODES),
        st.tuples(st.just("symlink"), st.sampled_from([b"a", b"../b", b"/bin/sh", b"d e/\xc3\xbc"]), st.just(0o777)),
        st.tuples(st.just("chardev"), st.sampled_from([b"1:3", b"5:1", b"4095:1048575"]), MODES),
        st.tuples(st.sampled_from(["link0", "link1"]), st.just(b""), st.just(0o755)),
    ),
    max_size=12,
)


def filelist_of(tree: dict[tuple[str, ...], tuple[str, bytes, int]], src: Path, root_mode: int) -> FileList:
    files = FileList()
    files.add_dir("/", WHY, mode=root_mode)
    parents = {path[:depth] for path in tree for depth in range(1, len(path))}
    for path, (kind, value, mode) in sorted(tree.items()):
        name = "/" + "/".join(path)
        if path in parents or kind == "dir":  # a path with entries below it must be a directory
            files.add_dir(name, WHY, mode=mode)
        elif kind == "file":
            files.add_bytes(name, value, WHY, mode=mode)
        elif kind == "symlink":
            files.add_symlink(name, os.fsdecode(value), WHY)
        elif kind == "chardev":
            major, minor = map(int, value.split(b":"))
            files.add_chardev(name, major, minor, WHY, mode=mode)
        else:  # members of one hard link group: sources that are one build-host inode
            first = src / kind
            if not first.exists():
                first.write_bytes(kind.encode() * 100)
            source = src / f"{kind}.{len(os.listdir(src))}"
            os.link(first, source)
            files.add_file(name, source, WHY, mode=mode)
    return files


@given(TREE, MODES)
def test_what_the_writer_writes_unpacks_identically(
    tree: dict[tuple[str, ...], tuple[str, bytes, int]], root_mode: int
) -> None:
    top = Path(tempfile.mkdtemp(prefix="cpio-roundtrip-"))
    try:
        (top / "src").mkdir()
        files = filelist_of(tree, top / "src", root_mode)
        image, count = build_cpio(files, MTIME)
        target = top / "target"
        assert cpio.extract(io.BytesIO(image), str(target)) == count == len(files)
        unpacked = {"/" + str(p.relative_to(target)) for p in target.rglob("*")}
        assert unpacked == {entry.path for entry in files.entries()} - {"/"}
        groups: dict[str, int] = {}
        for entry in files.entries():
            path = target / entry.path.lstrip("/")
            s = path.lstat()
            if entry.kind != Kind.SYMLINK:
                assert stat.S_IMODE(s.st_mode) == entry.mode, entry.path
            if entry.kind == Kind.DIR:
                assert stat.S_ISDIR(s.st_mode), entry.path
            elif entry.kind == Kind.SYMLINK:
                assert os.readlink(path) == entry.target
            elif entry.kind == Kind.CHARDEV:
                assert stat.S_ISCHR(s.st_mode) and (os.major(s.st_rdev), os.minor(s.st_rdev)) == entry.rdev
            else:
                assert stat.S_ISREG(s.st_mode) and path.read_bytes() == (
                    entry.data if entry.data is not None else Path(entry.source).read_bytes()
                )
                if entry.source:  # one unpacked inode per build-host inode
                    assert groups.setdefault(os.path.basename(entry.source).split(".")[0], s.st_ino) == s.st_ino
        headers = [(h.name, h.mode, h.size) for h, _ in cpio.entries(io.BytesIO(image))]
        assert [name for name, _, _ in headers] == [entry.path.lstrip("/") or "." for entry in files.entries()]
    finally:
        shutil.rmtree(top)
