"""Unpack a cpio "newc" archive (what the builder writes) into a directory, streaming.

Stage 2 unpacks stage 3 with this into a fresh tmpfs. Only what the builder writes is accepted: regular
files, directories, symbolic links, character devices and hard links; paths may not leave the target.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

HEADER_LEN = 110
MAGICS = (b"070701", b"070702")
TRAILER = "TRAILER!!!"


class CpioError(Exception):
    pass


@dataclass(frozen=True)
class Header:
    name: str
    ino: int
    mode: int
    nlink: int
    mtime: int
    size: int
    rdev: tuple[int, int]


def parse_header(raw: bytes) -> tuple[Header, int]:
    """A 110-byte newc header -> (header without name, name size)."""
    if len(raw) != HEADER_LEN or raw[:6] not in MAGICS:
        raise CpioError(f"not a newc cpio header: {raw[:6]!r}")
    fields = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    ino, mode, _uid, _gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, _check = fields
    return Header("", ino, mode, nlink, mtime, size, (rmaj, rmin)), namesize


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CpioError("archive ends in the middle of an entry")
    return data


def entries(stream: BinaryIO) -> Iterator[tuple[Header, BinaryIO]]:
    """Yield (header, stream positioned at the data); the caller reads exactly header.size bytes or none."""
    while True:
        header, namesize = parse_header(_read_exact(stream, HEADER_LEN))
        name = _read_exact(stream, namesize).rstrip(b"\0").decode()
        _read_exact(stream, _pad(HEADER_LEN + namesize))
        if name == TRAILER:
            return
        header = Header(name, header.ino, header.mode, header.nlink, header.mtime, header.size, header.rdev)
        consumed = _Counted(stream, header.size)
        yield header, consumed  # type: ignore[misc]
        consumed.skip_rest()
        _read_exact(stream, _pad(header.size))


class _Counted:
    """A view of the next `size` bytes, so an unread remainder can be skipped."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.stream.read(n)
        self.left -= len(data)
        return data

    def skip_rest(self) -> None:
        while self.left:
            if not self.read(1 << 20):
                raise CpioError("archive ends in the middle of a file")


def safe_join(root: str, name: str) -> str:
    """`root` + the entry name; a name with a `..` component is refused, never silently clamped."""
    if ".." in name.split("/"):
        raise CpioError(f"entry {name!r} leaves the target directory")
    path = posixpath.normpath("/" + name)
    return root if path == "/" else root.rstrip("/") + path


def extract(stream: BinaryIO, root: str) -> int:
    """Unpack into `root`; returns the number of entries. Hard links: newc stores the data with the last
    name of an inode; the others are linked to it at the end."""
    count = 0
    links: dict[int, list[str]] = {}
    data_of: dict[int, str] = {}
    for header, data in entries(stream):
        count += 1
        target = safe_join(root, header.name)
        kind = stat.S_IFMT(header.mode)
        perm = stat.S_IMODE(header.mode)
        if kind == stat.S_IFDIR:
            os.makedirs(target, exist_ok=True)
            os.chmod(target, perm)
        elif kind == stat.S_IFLNK:
            os.symlink(data.read().decode(), target)
        elif kind == stat.S_IFCHR:
            os.mknod(target, perm | stat.S_IFCHR, os.makedev(*header.rdev))
        elif kind == stat.S_IFREG:
            if header.nlink > 1 and header.size == 0:
                links.setdefault(header.ino, []).append(target)
                continue
            with open(target, "wb") as out:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
            os.chmod(target, perm)
            if header.nlink > 1:
                data_of[header.ino] = target
        else:
            raise CpioError(f"entry {header.name!r} has a file type this agent does not unpack: {kind:o}")
    for ino, names in links.items():
        if ino not in data_of:
            raise CpioError(f"hard link group {ino} has no member with data")
        for name in names:
            os.link(data_of[ino], name)
    return count
