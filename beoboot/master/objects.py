"""The master's side of the libcache: content hashes of its own files, and the files behind the hashes.

A node asks for an object by the sha256 of its content (agent.protocol.OBJECTS_PATH), never by path, so
it can never receive a version other than the one its manifest names. Hashing a file on every job would
read every library every time: hashes are cached per (device, inode, size, mtime_ns). Replacing a file
(package upgrade: new inode) or rewriting it (new mtime/size) gives a new key and a new hash.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from beoboot.manifest import sha256_file

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
        key = stat_key(st)
        with self._lock:
            known = self._by_key.get(key)
        if known is None:
            known = sha256_file(path)
            # a file rewritten while it was read would be stored under a key that no longer matches it
            if stat_key(os.stat(path)) != key:
                return self.digest(path)
            with self._lock:
                self._by_key[key] = known
                self.hashed += 1
        found = Digest(os.path.realpath(path), known, st.st_size, st.st_mode & 0o7777, key, st.st_uid, st.st_gid)
        with self._lock:
            self._by_hash[known] = found
        return found

    def lookup(self, sha256: str) -> str | None:
        """The path of a file whose content has this hash now, or None (unknown, or changed since hashed)."""
        with self._lock:
            found = self._by_hash.get(sha256)
        if found is None:
            return None
        try:
            if stat_key(os.stat(found.path)) == found.key:
                return found.path
        except OSError:
            pass
        with self._lock:
            self._by_hash.pop(sha256, None)
        return None
