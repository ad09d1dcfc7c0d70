"""Hand-made newc archives, for inputs the builder never writes (hostile links, bad headers)."""

from __future__ import annotations

import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    name: str | bytes
    mode: int  # file type and permission bits
    data: bytes = b""  # file data, or a symlink's target
    ino: int = 0  # 0: a fresh inode number is given
    nlink: int = 1
    rdev: tuple[int, int] = (0, 0)


def file(name: str | bytes, data: bytes = b"", mode: int = 0o644, **kw: object) -> Member:
    return Member(name, stat.S_IFREG | mode, data, **kw)  # type: ignore[arg-type]


def directory(name: str | bytes, mode: int = 0o755) -> Member:
    return Member(name, stat.S_IFDIR | mode)


def symlink(name: str | bytes, target: str | bytes) -> Member:
    return Member(name, stat.S_IFLNK | 0o777, target.encode() if isinstance(target, str) else target)


def chardev(name: str | bytes, major: int, minor: int, mode: int = 0o600) -> Member:
    return Member(name, stat.S_IFCHR | mode, rdev=(major, minor))


def pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def header(
    name: bytes,
    *,
    ino: int,
    mode: int,
    nlink: int,
    size: int,
    rdev: tuple[int, int] = (0, 0),
    namesize: int | None = None,
    magic: bytes = b"070701",
) -> bytes:
    fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev[0],
        rdev[1],
        len(name) + 1 if namesize is None else namesize,
        0,
    ]
    return magic + b"".join(b"%08x" % value for value in fields)


def encode(member: Member, ino: int) -> bytes:
    name = member.name.encode() if isinstance(member.name, str) else member.name
    head = (
        header(
            name, ino=member.ino or ino, mode=member.mode, nlink=member.nlink, size=len(member.data), rdev=member.rdev
        )
        + name
        + b"\0"
    )
    return head + pad(len(head)) + member.data + pad(len(member.data))


def trailer() -> bytes:
    head = header(b"TRAILER!!!", ino=0, mode=0, nlink=1, size=0) + b"TRAILER!!!\0"
    return head + pad(len(head))


def archive(*members: Member) -> bytes:
    return b"".join(encode(member, 1000 + index) for index, member in enumerate(members)) + trailer()
