"""Unpack a cpio "newc" archive (what the builder writes) into a directory, streaming."""

# Stage 2 unpacks stage 3 with this into a fresh tmpfs; stage 3 unpacks the environment root. Only what
# the builder writes is accepted: regular files, directories, symbolic links, character devices and hard
# links. Any other input is a CpioError naming the entry (its name and offset) and what is wrong.
#
# Nothing is ever created or changed outside the target, whatever the archive holds:
# - every path is walked from a descriptor of the target, one component at a time, with O_NOFOLLOW: an
#   entry whose parent is a symlink (or a file) is refused, a `..` component is refused, never clamped;
# - the last component is created through its parent's descriptor with O_EXCL semantics, so an existing
#   entry of that name is never written through. A later entry replaces an earlier one of the same name
#   (the earlier one is unlinked first), except that a directory over a directory keeps it (and its
#   contents) and sets its mode, and nothing replaces a directory that is not empty;
# - symlinks are created exactly as the archive gives them (the image's own links, followed later inside
#   the chroot); the unpacker never follows one;
# - a parent directory missing from the archive is created with mode 0755.
# Modes are the header's permission bits exactly (set with fchmod, so the umask plays no part, and
# setuid/setgid/sticky only where the header has them); owners stay whoever unpacks (root on a node).

from __future__ import annotations

import errno
import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol


class Readable(Protocol):
    """What the unpacker reads: a file, a GzipFile, a pipe."""

    def read(self, n: int = -1, /) -> bytes: ...


HEADER_LEN = 110
MAGICS = (b"070701", b"070702")
TRAILER = "TRAILER!!!"
MAX_NAME = 4096  # PATH_MAX, with the NUL: the limit is checked before a name is read
MAX_LINK_TARGET = 4095
MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1  # what a Linux dev_t can hold
CHUNK = 1 << 20
_HEX = frozenset(b"0123456789abcdefABCDEF")
_FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)
_DIR_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class CpioError(Exception):
    """An archive that is malformed or cannot be unpacked here; names the entry and what is wrong."""


class _Refused(Exception):
    """What is wrong with one entry; extract() adds which entry it is."""


@dataclass(frozen=True)
class Header:
    name: str
    ino: int
    mode: int
    nlink: int
    mtime: int
    size: int
    rdev: tuple[int, int]
    offset: int = 0  # where the entry's header starts in the (uncompressed) archive

    def where(self) -> str:
        return f"entry {_shown(self.name)} at offset {self.offset}"


def _shown(name: str | bytes) -> str:
    text = repr(name)
    return text if len(text) <= 200 else text[:200] + "..."


def parse_header(raw: bytes, offset: int = 0) -> tuple[Header, int]:
    """A 110-byte newc header -> (header without name, name size). Every field must be 8 hex digits
    (int(x, 16) alone would take signs, spaces, underscores and "0x")."""
    if len(raw) != HEADER_LEN or raw[:6] not in MAGICS:
        raise CpioError(f"no newc cpio header at offset {offset}: it starts {raw[:6]!r}")
    values = {}
    for index, field in enumerate(_FIELDS):
        digits = raw[6 + 8 * index : 14 + 8 * index]
        if not _HEX.issuperset(digits):
            raise CpioError(f"the header at offset {offset} has a {field} field that is not hex: {digits!r}")
        values[field] = int(digits, 16)
    header = Header(
        "",
        values["ino"],
        values["mode"],
        values["nlink"],
        values["mtime"],
        values["filesize"],
        (values["rdevmajor"], values["rdevminor"]),
        offset,
    )
    return header, values["namesize"]


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class _Reader:
    """Exact reads from the archive stream, counting the offset; a short or failing read (a truncated or
    corrupt compressed stream) is a CpioError saying what was being read."""

    def __init__(self, stream: Readable) -> None:
        self.stream, self.offset = stream, 0

    def exact(self, n: int, what: str) -> bytes:
        parts, left = [], n
        while left:
            try:
                data = self.stream.read(left)
            except (OSError, EOFError, zlib.error) as e:
                raise CpioError(f"cannot read {what} at offset {self.offset}: {e}") from None
            if not data:
                raise CpioError(f"the archive ends inside {what} (offset {self.offset})")
            parts.append(data)
            left -= len(data)
            self.offset += len(data)
        return b"".join(parts)


def _decode_name(raw: bytes, offset: int) -> str:
    if raw[-1:] != b"\0" or b"\0" in raw[:-1]:
        raise CpioError(f"the entry at offset {offset} has a name that is not one NUL-terminated string: {_shown(raw)}")
    try:
        return raw[:-1].decode()
    except UnicodeDecodeError:
        raise CpioError(f"the entry at offset {offset} has a name that is not UTF-8: {_shown(raw[:-1])}") from None


def entries(stream: Readable) -> Iterator[tuple[Header, _Counted]]:
    """Yield (header, view of its data); the caller reads at most header.size bytes (the rest is skipped).
    Sizes are checked before anything is allocated: names up to MAX_NAME, data read in chunks."""
    reader = _Reader(stream)
    while True:
        offset = reader.offset
        header, namesize = parse_header(reader.exact(HEADER_LEN, "an entry header"), offset)
        if not 1 <= namesize <= MAX_NAME:
            raise CpioError(f"the entry at offset {offset} has a name size of {namesize} (1 to {MAX_NAME} allowed)")
        name = _decode_name(reader.exact(namesize, f"the name of the entry at offset {offset}"), offset)
        header = replace(header, name=name)
        reader.exact(_pad(HEADER_LEN + namesize), f"the padding after the name of {header.where()}")
        if name == TRAILER:
            return
        data = _Counted(reader, header)
        yield header, data
        data.skip_rest()
        reader.exact(_pad(header.size), f"the padding after the data of {header.where()}")


class _Counted:
    """A view of one entry's `size` bytes, so an unread remainder can be skipped."""

    def __init__(self, reader: _Reader, header: Header) -> None:
        self.reader, self.left, self.what = reader, header.size, f"the data of {header.where()}"

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.reader.exact(n, self.what)
        self.left -= n
        return data

    def skip_rest(self) -> None:
        while self.left:
            self.read(CHUNK)


def name_parts(name: str) -> tuple[str, ...]:
    """The path components of an entry name below the target: empty and "." components are dropped (so
    "./usr//bin" is "usr/bin" and "." is the target itself); a ".." component is refused, never clamped."""
    if not name:
        raise _Refused("an empty name")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _Refused("its name leaves the target directory (a '..' component)")
    return parts


@dataclass(frozen=True)
class _Created:
    """The first member of a hard link group as created, so later members link to that very file."""

    parts: tuple[str, ...]
    identity: tuple[int, int]  # st_dev, st_ino


class _Unpacker:
    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.parent_key: tuple[str, ...] | None = None  # the last parent walked, kept open: archives are sorted
        self.parent_fd = -1
        self.link_groups: dict[tuple[int, int], _Created] = {}

    def close(self) -> None:
        self._forget_parent()

    def _forget_parent(self) -> None:
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
        self.parent_key, self.parent_fd = None, -1

    def _walk(self, parts: tuple[str, ...]) -> int:
        """A new descriptor of the directory `parts` below the target, never through a link; missing
        directories are created 0755."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts):
                try:
                    child = _open_dir(fd, part)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        where = "/".join(parts[: depth + 1])
                        raise _Refused(
                            f"{where} is not a directory (a symlink or a file): nothing is unpacked through it"
                        ) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent(self, parts: tuple[str, ...]) -> int:
        key = parts[:-1]
        if key != self.parent_key:
            self._forget_parent()
            self.parent_fd, self.parent_key = self._walk(key), key
        return self.parent_fd

    def make_room(self, parent_fd: int, leaf: str, *, keep_dir: bool) -> bool:
        """Clear `leaf` for a new entry: an earlier non-directory is unlinked (never written through), an
        earlier directory is kept when `keep_dir` (True is returned), else removed if it is empty."""
        try:
            st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(leaf, dir_fd=parent_fd)
            return False
        if keep_dir:
            return True
        try:
            os.rmdir(leaf, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _Refused("it would replace a directory that is not empty") from None
            raise
        # The kept parent descriptor stays right: it is this entry's parent, never the removed directory.
        return False

    def add(self, header: Header, data: _Counted) -> None:
        kind, perm = stat.S_IFMT(header.mode), stat.S_IMODE(header.mode)
        if header.mode >> 16:
            raise _Refused(f"its mode {header.mode:#o} has bits beyond a file type and permissions")
        parts = name_parts(header.name)
        if not parts:
            if kind != stat.S_IFDIR:
                raise _Refused("it names the target directory itself but is not a directory")
            os.fchmod(self.root_fd, perm)
            return
        parent_fd, leaf = self.parent(parts), parts[-1]
        if kind == stat.S_IFDIR:
            self.add_dir(parent_fd, leaf, perm)
        elif kind == stat.S_IFREG:
            self.add_file(parent_fd, parts, header, data)
        elif kind == stat.S_IFLNK:
            if not 1 <= header.size <= MAX_LINK_TARGET:
                raise _Refused(f"a symlink target of {header.size} bytes (1 to {MAX_LINK_TARGET} allowed)")
            target = data.read()
            if b"\0" in target:
                raise _Refused("a symlink target with a NUL byte")
            self.make_room(parent_fd, leaf, keep_dir=False)
            os.symlink(target, leaf, dir_fd=parent_fd)
        elif kind == stat.S_IFCHR:
            major, minor = header.rdev
            if major > MAX_MAJOR or minor > MAX_MINOR:
                raise _Refused(f"device number {major}:{minor} does not fit a Linux dev_t")
            self.make_room(parent_fd, leaf, keep_dir=False)
            os.mknod(leaf, stat.S_IFCHR | 0o600, os.makedev(major, minor), dir_fd=parent_fd)
            # A device cannot be opened just to fchmod it (that would open the device). mknod failed
            # if anything was at `leaf`, so the name is the node just made, not a link to follow.
            os.chmod(leaf, perm, dir_fd=parent_fd)
        else:
            raise _Refused(f"a file type this agent does not unpack: {kind:o}")

    def add_dir(self, parent_fd: int, leaf: str, perm: int) -> None:
        if not self.make_room(parent_fd, leaf, keep_dir=True):
            os.mkdir(leaf, 0o700, dir_fd=parent_fd)
        fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.fchmod(fd, perm)
        finally:
            os.close(fd)

    def add_file(self, parent_fd: int, parts: tuple[str, ...], header: Header, data: _Counted) -> None:
        """newc hard links: every member of a group has the group's inode number and nlink > 1; the data
        is on one member (the last, as the builder writes it). Like the kernel, the first member is created
        and every later one is linked to it; data is written through whichever member carries it (a member
        without data leaves the group's data as it is)."""
        leaf = parts[-1]
        group = (header.ino, header.mode) if header.nlink > 1 else None
        first = self.link_groups.get(group) if group else None
        self.make_room(parent_fd, leaf, keep_dir=False)
        if first is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(leaf, flags, 0o600, dir_fd=parent_fd)
        else:
            self._link(first, parent_fd, leaf)
            fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            if first is not None and data.left:
                os.ftruncate(fd, 0)
            while data.left:
                _write_all(fd, data.read(CHUNK))
            os.fchmod(fd, stat.S_IMODE(header.mode))
            if group and first is None:
                st = os.fstat(fd)
                self.link_groups[group] = _Created(parts, (st.st_dev, st.st_ino))
        finally:
            os.close(fd)

    def _link(self, first: _Created, parent_fd: int, leaf: str) -> None:
        source_fd = self._walk(first.parts[:-1])
        try:
            try:
                st = os.stat(first.parts[-1], dir_fd=source_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is None or (st.st_dev, st.st_ino) != first.identity:
                first_name = "/".join(first.parts)
                raise _Refused(f"its hard link group's first member {first_name} was replaced by a later entry")
            os.link(first.parts[-1], leaf, src_dir_fd=source_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(source_fd)


def _open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(name, _DIR_PATH_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o755)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def extract(stream: Readable, root: str) -> int:
    """Unpack into `root` (created if missing); returns the number of entries."""
    try:
        os.makedirs(root, exist_ok=True)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CpioError(f"cannot open the target directory {root}: {e.strerror}") from None
    unpacker = _Unpacker(root_fd)
    count = 0
    try:
        for header, data in entries(stream):
            count += 1
            try:
                unpacker.add(header, data)
            except _Refused as e:
                raise CpioError(f"{header.where()}: {e}") from None
            except OSError as e:
                raise CpioError(f"{header.where()}: cannot unpack it: {e.strerror or e}") from None
    finally:
        unpacker.close()
        os.close(root_fd)
    return count


GZIP_MAGIC = b"\x1f\x8b"


def extract_image(image: str, root: str) -> int:
    """Unpack an image file an agent fetched: gzip-compressed or plain cpio, the compressions a stage unpacked
    by an agent allows (Python's zlib is all the images carry)."""
    with open(image, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    with (gzip.open if compressed else open)(image, "rb") as stream:
        return extract(stream, root)
