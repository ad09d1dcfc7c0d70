"""Opening a file that someone else may have put in the way: never wait on a FIFO, a device or a socket.

beoserv reads, as root, the files users' jobs name (programs, the libraries their RUNPATH points at, scripts,
Python and Perl sources), and `beoboot-build` reads whatever tree it is given. open() of a FIFO waits for a
writer and read() of a terminal or a device may never end: one such file would hold the reading thread for
ever. O_NONBLOCK makes the open return at once, and fstat() of what was opened (not a stat() before it,
which a rename could outrun) says whether it is a regular file; only then is it read.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A path that names a FIFO, socket, device or directory where a file was to be read. An OSError, so
    that code which passes unreadable files by passes these by too."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path}: not a regular file ({kind})")
        self.filename = path
        self.strerror = f"not a regular file ({kind})"


class FileTooLarge(OSError):
    """A file larger than its reader allows (read_regular's limit)."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(f"{path}: larger than {limit} bytes")
        self.filename = path
        self.strerror = f"larger than {limit} bytes"


def kind_of(mode: int) -> str:
    return next((name for test, name in FILE_KINDS if test(mode)), "no regular file")


def open_regular_fd(path: str | os.PathLike[str], *, follow: bool = True) -> int:
    """A descriptor of `path` opened for reading, if it is a regular file; NotRegularFile otherwise.
    `follow=False` (O_NOFOLLOW) where the caller resolved the links itself: a link put in the place of the
    last component since then is refused rather than followed somewhere the caller never looked."""
    fd = os.open(path, OPEN_FLAGS | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(os.fspath(path), kind_of(mode))
        # reads of a regular file never block; a descriptor in blocking mode is what file objects expect
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> BinaryIO:
    """open_regular_fd() as a binary file object."""
    return os.fdopen(open_regular_fd(path, follow=follow), "rb")


def read_regular(path: str | os.PathLike[str], limit: int, *, follow: bool = True) -> bytes:
    """The content of the regular file `path`, FileTooLarge beyond `limit` bytes (a reader given a 10 GB
    file where a config file was expected must not try to hold it)."""
    with open_regular(path, follow=follow) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(os.fspath(path), limit)
    return data
