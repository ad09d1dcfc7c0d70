"""The master's side of the libcache: content hashes of its own files, and the files behind the hashes.

A node asks for an object by the sha256 of its content (agent.protocol.OBJECTS_PATH), never by path, so
it can never receive a version other than the one its manifest names. Hashing a file on every job would
read every library every time: hashes are cached per (device, inode, size, mtime_ns). Replacing a file
(package upgrade: new inode) or rewriting it (new mtime/size) gives a new key and a new hash.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from beoboot.master.exhaustion import exhausted
from beoboot.regularfile import open_regular

# st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns: the ctime so that a chmod or chown, which changes
# who may read the file and how the node must hold it, is a change too
StatKey = tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def key_of(path: str) -> StatKey | None:
    """The stat key of the file `path` names (links followed), or None if there is none."""
    try:
        return stat_key(os.stat(path))
    except OSError:
        return None


@dataclass(frozen=True)
class Digest:
    path: str  # the master's file, links resolved
    sha256: str
    size: int
    mode: int  # permission bits
    key: StatKey
    uid: int = 0  # owner
    gid: int = 0


class ObjectStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[StatKey, str] = {}  # stat key -> sha256
        self._by_hash: dict[str, Digest] = {}  # sha256 -> the newest file seen with that content
        self.hashed = 0  # files read and hashed (cache misses), for tests and figures

    def digest(self, path: str) -> Digest:
        """The sha256 of the regular file at `path` (links followed), read only when its stat key is new."""
        st = os.stat(path)
        known = self._known(stat_key(st), lambda: _sha256_of_path(path), lambda: stat_key(os.stat(path)))
        if known is None:  # rewritten while it was read
            return self.digest(path)
        return self._remember(
            Digest(os.path.realpath(path), known, st.st_size, st.st_mode & 0o7777, stat_key(st), st.st_uid, st.st_gid)
        )

    def digest_opened(self, fd: int, path: str) -> Digest:
        """digest() of a file already open: what that open gave (as the job's user), not whatever `path`
        names by the time it is read, which a user's link swapped in meanwhile could make another user's
        file. The store serves it from `path` while the stat key there is still this one."""
        st = os.fstat(fd)
        known = self._known(stat_key(st), lambda: _sha256_of_descriptor(fd), lambda: stat_key(os.fstat(fd)))
        if known is None:
            return self.digest_opened(fd, path)
        return self._remember(Digest(path, known, st.st_size, st.st_mode & 0o7777, stat_key(st), st.st_uid, st.st_gid))

    def _known(self, key: StatKey, read: Callable[[], str], key_now: Callable[[], StatKey]) -> str | None:
        """The hash for this stat key, read if new; None if the file changed while it was read (a hash
        stored under a key that no longer matches it would be served for other bytes)."""
        with self._lock:
            known = self._by_key.get(key)
        if known is not None:
            return known
        known = read()
        if key_now() != key:
            return None
        with self._lock:
            self._by_key[key] = known
            self.hashed += 1
        return known

    def _remember(self, found: Digest) -> Digest:
        with self._lock:
            self._by_hash[found.sha256] = found
        return found

    def lookup(self, sha256: str) -> str | None:
        """The path of a file whose content has this hash now, or None (unknown, or changed since hashed)."""
        found = self.find(sha256)
        return found.path if found is not None else None

    def find(self, sha256: str) -> Digest | None:
        """lookup(), with the stat key the hash is of: whoever opens found.path checks that what it opened
        still has found.key, since the file may be replaced meanwhile."""
        with self._lock:
            found = self._by_hash.get(sha256)
        if found is None:
            return None
        try:
            if stat_key(os.stat(found.path)) == found.key:
                return found
        except OSError as exc:
            if exhausted(exc):  # no answer about the file: it is not forgotten for that
                raise
        with self._lock:
            self._by_hash.pop(sha256, None)
        return None


def _sha256_of_path(path: str) -> str:
    """The file's hash, opened as open_regular() does: a FIFO put in its place since its stat() is
    refused rather than waited on for ever."""
    with open_regular(path) as f:
        return _sha256_of_descriptor(f.fileno())


def _sha256_of_descriptor(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", closefd=False) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
