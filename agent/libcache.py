"""The libcache: a content-addressed store of the master's executables and libraries, and the environment root
they are linked into.

Where it lives: inside the environment root's own mount, at ENV_ROOT/.libcache (mode 0700): a tmpfs, or a
local disk by config (libcache_disk), where objects outlive a reboot and are hashed again first (verify). A job's files
are HARD LINKS to the cached objects, so a library used by many jobs is stored once; link(2) only works
within one mount (it fails with EXDEV even across a bind mount of the same tmpfs), so the cache must be on
the very mount the jobs' paths are created on. A separate tmpfs bound into place would hide the cache from
jobs, but the links would have to be made through the unbound path; the hidden directory is simpler and
the cost is that a root job can see it. A job path under another mount of the environment root (/tmp is
its own tmpfs) cannot be a link: it gets a copy, put in place the same way.

Objects: OBJECTS/<sha256>.<mode in octal>. The mode is part of the name because a hard link shares its
inode's mode: the same bytes wanted as 0755 and 0644 are two objects. Write bits are dropped so a job
cannot edit a library in place under every other job that shares it. An object is written to TMP under a
unique name, its hash checked, then renamed into OBJECTS: a reader sees a whole, verified object or none;
a mismatch is thrown away and fetched again.

Eviction: least recently used objects that no running job holds go when the total passes `max_bytes`;
their links in the environment root go with them (else the memory would stay in use).

Standard library plus requests: runs in the node image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

from agent import protocol as p
from agent.download import sha256_of

LIBCACHE_DIR = ".libcache"  # in the environment root

CHUNK = 1 << 20
ACL_XATTR = "system.posix_acl_access"
FETCH_ATTEMPTS = 3
FETCH_WORKERS = 8  # parallel object downloads per job: enough to hide latency, few enough for a busy master


class LibCacheError(Exception):
    """An object could not be fetched or verified, or a path could not be materialised."""


@dataclass
class CachedObject:
    name: str  # file name in OBJECTS
    size: int
    last_used: float
    holds: int = 0  # running jobs using it
    links: set[str] = field(default_factory=set)  # environment-root paths linked to it
    copies: dict[str, tuple[int, int]] = field(default_factory=dict)  # paths on other mounts -> (dev, inode)
    inode: tuple[int, int] = (0, 0)  # (dev, inode) of the object file: a path with these is linked to it

    @property
    def footprint(self) -> int:
        """Bytes it takes: the object, and each copy on another mount (links cost nothing)."""
        return self.size * (1 + len(self.copies))


def object_name(entry: p.JobFile) -> str:
    """sha256.MODE, then .UID.GID for a file root does not own and .aclHASH for one with an ACL: hard links
    share their owner, mode and ACL, so the same content held two ways is two objects."""
    owner = f".{entry.uid}.{entry.gid}" if entry.uid or entry.gid else ""
    acl = f".acl{hashlib.sha256(entry.acl.encode()).hexdigest()[:16]}" if entry.acl else ""
    return f"{entry.sha256}.{entry.mode & 0o7777:o}{owner}{acl}"


def give_owner_and_mode(path: str, entry: p.JobFile) -> None:
    """The master's owner, then its mode (chown clears the setuid and setgid bits, so the mode comes last):
    a user's 0600 file stays theirs and a setuid program stays setuid to its own owner, never to root."""
    if entry.uid or entry.gid:
        os.chown(path, entry.uid, entry.gid)
    os.chmod(path, object_mode(entry.mode))
    if entry.acl:  # after the mode: the ACL's mask is the group bits
        os.setxattr(path, ACL_XATTR, _read_only_acl(bytes.fromhex(entry.acl)))


def _acl_of(path: str) -> bytes:
    try:
        return os.getxattr(path, ACL_XATTR)
    except OSError:
        return b""


def _read_only_acl(acl: bytes) -> bytes:
    """The ACL with every write permission taken out, as object_mode does for the mode: an object is shared
    by every job that holds it. posix_acl_xattr: a 4-byte version, then (tag u16, perm u16, id u32) entries."""
    entries = bytearray(acl)
    for offset in range(4, len(entries) - 7, 8):
        entries[offset + 2] &= ~2 & 0xFF  # perm's low byte: r=4 w=2 x=1
    return bytes(entries)


def object_mode(mode: int) -> int:
    return mode & 0o7555


class LibCache:
    def __init__(
        self,
        cache_dir: str,
        env_root: str,
        master_url: str,
        *,
        max_bytes: int = 512 << 20,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        durable: bool = True,
    ) -> None:
        self.cache_dir = cache_dir
        self.objects_dir = os.path.join(cache_dir, "objects")
        self.tmp_dir = os.path.join(cache_dir, "tmp")
        self.env_root = os.path.realpath(env_root)
        self.master_url = master_url.rstrip("/")
        self.max_bytes = max_bytes
        self.session = session or requests.Session()
        self.clock = clock
        # on a local disk, an object's bytes must be on it before its name is (fsync before rename); in RAM
        # (tmpfs, a diskless node's cache, or a simulated node's scratch directory) there is nothing to wait for
        self.durable = durable
        self._lock = threading.Lock()
        self._objects: dict[str, CachedObject] = {}
        self._fetching: dict[str, threading.Event] = {}
        self.fetched = 0  # objects fetched since start
        os.makedirs(self.objects_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        for leftover in os.listdir(self.tmp_dir):  # a crash mid-download: never renamed, never seen
            os.unlink(os.path.join(self.tmp_dir, leftover))
        for name in os.listdir(self.objects_dir):
            st = os.stat(os.path.join(self.objects_dir, name))
            self._objects[name] = CachedObject(name, st.st_size, st.st_mtime, inode=(st.st_dev, st.st_ino))

    def verify(self) -> tuple[int, int]:
        """Hash every object and drop those whose content is not their name: for a cache on a local disk
        that outlives a reboot, where a power cut or a fault may have damaged what was written before.
        Returns (kept, dropped)."""
        dropped = 0
        with self._lock:
            for name in list(self._objects):
                path = os.path.join(self.objects_dir, name)
                if sha256_of(path) != name.partition(".")[0]:
                    _unlink(path)
                    del self._objects[name]
                    dropped += 1
            return len(self._objects), dropped

    # --- queries ------------------------------------------------------------------------------------------

    def total_bytes(self) -> int:
        with self._lock:
            return sum(o.footprint for o in self._objects.values())

    def names(self) -> set[str]:
        with self._lock:
            return set(self._objects)

    def missing(self, files: Iterable[p.JobFile]) -> list[p.JobFile]:
        with self._lock:
            wanted = {object_name(f): f for f in files if f.sha256}
            return [f for name, f in wanted.items() if name not in self._objects]

    # --- fetch --------------------------------------------------------------------------------------------

    def ensure(self, files: Iterable[p.JobFile]) -> int:
        """Fetch every object these files need that is not cached yet, in parallel; the number fetched."""
        missing = self.missing(files)
        if not missing:
            return 0
        if len(missing) == 1:
            self._fetch_once(missing[0])
            return 1
        # plain threads, not concurrent.futures: that would pull multiprocessing into the node image
        todo = list(missing)
        errors: list[LibCacheError] = []
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    if not todo or errors:
                        return
                    entry = todo.pop()
                try:
                    self._fetch_once(entry)
                except (LibCacheError, OSError) as exc:
                    with lock:
                        errors.append(LibCacheError(f"{entry.path}: {exc}"))

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(min(FETCH_WORKERS, len(todo)))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if errors:
            raise errors[0]
        return len(missing)

    def _fetch_once(self, entry: p.JobFile) -> None:
        """Fetch one object, or wait for the thread already fetching it (two jobs wanting the same library)."""
        name = object_name(entry)
        with self._lock:
            if name in self._objects:
                return
            busy = self._fetching.get(name)
            if busy is None:
                self._fetching[name] = threading.Event()
        if busy is not None:
            busy.wait()
            if name not in self._objects:
                raise LibCacheError(f"object {name} for {entry.path}: the other fetch of it failed")
            return
        try:
            self._fetch(entry, name)
        finally:
            with self._lock:
                self._fetching.pop(name).set()

    def _fetch(self, entry: p.JobFile, name: str) -> None:
        url = self.master_url + p.OBJECTS_PATH.format(digest=entry.sha256)
        problem = ""
        for _ in range(FETCH_ATTEMPTS):
            tmp = os.path.join(self.tmp_dir, f"{name}.{threading.get_ident()}")
            try:
                digest, size = self._download(url, tmp)
            except (requests.RequestException, OSError) as exc:
                problem = f"download failed: {exc}"
                _unlink(tmp)
                continue
            if digest != entry.sha256:
                problem = f"content hash {digest} does not match the manifest"
                _unlink(tmp)
                continue
            give_owner_and_mode(tmp, entry)
            st = os.stat(tmp)
            os.rename(tmp, os.path.join(self.objects_dir, name))
            with self._lock:
                self._objects[name] = CachedObject(name, size, self.clock(), inode=(st.st_dev, st.st_ino))
                self.fetched += 1
            return
        raise LibCacheError(f"cannot cache {entry.path} (sha256 {entry.sha256}) from {url}: {problem}")

    def _download(self, url: str, tmp: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with self.session.get(url, stream=True, timeout=30) as response:
            if response.status_code != 200:
                raise requests.RequestException(f"HTTP {response.status_code}: {response.text.strip()[:200]}")
            with open(tmp, "xb") as out:
                for chunk in response.iter_content(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                if self.durable:
                    out.flush()
                    os.fsync(out.fileno())  # on a disk cache: the rename must not land before the bytes
        return digest.hexdigest(), size

    # --- holds and the environment root -------------------------------------------------------------------

    def hold(self, files: Iterable[p.JobFile]) -> list[str]:
        """Pin these files' objects for a running job (eviction skips them); give the list to release()."""
        now = self.clock()
        held = []
        with self._lock:
            for name in {object_name(f) for f in files if f.sha256}:
                obj = self._objects.get(name)
                if obj is None:
                    raise LibCacheError(f"object {name} is not cached: call ensure() first")
                obj.holds += 1
                obj.last_used = now
                held.append(name)
        return held

    def release(self, held: Iterable[str]) -> None:
        with self._lock:
            for name in held:
                obj = self._objects.get(name)
                if obj is not None:
                    obj.holds = max(0, obj.holds - 1)
        self.evict()

    def host_path(self, path: str) -> str:
        relative = os.path.normpath("/" + path).lstrip("/")
        if relative.startswith(".libcache") or not relative:
            raise LibCacheError(f"job path {path!r} is not allowed: it names the environment root or its cache")
        return self.env_root + "/" + relative  # os.path.join, without its checks: paid per path per job

    def materialise(self, files: Iterable[p.JobFile]) -> None:
        """Create every file of the manifest in the environment root: symlinks as given, regular files as
        hard links to their objects. A path that already links the right object is left alone; one that holds
        an older version is replaced by rename, so a job starting meanwhile sees the old or the new file."""
        with self._lock:
            for entry in files:
                target = self.host_path(entry.path)
                if entry.link:
                    self._make_symlink(target, entry.link)
                    continue
                if not entry.sha256:
                    self._make_directory(target, entry)
                    continue
                name = object_name(entry)
                obj = self._objects[name]
                try:
                    present = os.lstat(target)  # one system call for a path that is already right
                    if (present.st_dev, present.st_ino) in (obj.inode, obj.copies.get(target)):
                        continue  # the object itself, or our copy of it on another mount
                except FileNotFoundError:
                    pass
                self._make_parent(target)
                source = os.path.join(self.objects_dir, name)
                tmp = f"{target}.beoboot-{threading.get_ident()}"
                _unlink(tmp)
                try:
                    os.link(source, tmp)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    # the path is under another mount of the environment root (/tmp is its own tmpfs):
                    # a copy, renamed into place the same way
                    shutil.copyfile(source, tmp)
                    give_owner_and_mode(tmp, entry)
                try:
                    os.rename(tmp, target)
                except OSError as exc:
                    _unlink(tmp)
                    raise LibCacheError(f"cannot place {entry.path} in the environment root: {exc}") from None
                placed = os.lstat(target)
                if (placed.st_dev, placed.st_ino) == obj.inode:
                    obj.links.add(target)
                else:
                    obj.copies[target] = (placed.st_dev, placed.st_ino)

    def _make_directory(self, target: str, entry: p.JobFile) -> None:
        """A directory with the master's mode, owner and ACL; one an earlier job made differently (on the way
        to a file, as root's 0755) gets them now. Its own mount points (/tmp, /dev) are left as mounted."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            self._make_parent(target)
            os.makedirs(target, mode=0o700, exist_ok=True)  # no one else's until it has its owner and mode
            st = os.lstat(target)
        mode = entry.mode & 0o7777 or 0o755
        if not stat.S_ISDIR(st.st_mode):
            return
        same = (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, entry.uid, entry.gid)
        if same and (not entry.acl or _acl_of(target) == bytes.fromhex(entry.acl)):
            return  # as it should be: one lstat for a directory already right
        if os.path.ismount(target):
            return
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            os.chown(target, entry.uid, entry.gid)
        os.chmod(target, mode)
        if entry.acl:  # a directory is no shared object: its ACL as the master has it
            os.setxattr(target, ACL_XATTR, bytes.fromhex(entry.acl))

    def _make_parent(self, target: str) -> None:
        """Create the directories above `target`, refusing a path that leaves the environment root: the links
        a job brought are absolute (/usr/lib64/ld-linux-x86-64.so.2 -> /lib/...), and followed from outside
        the chroot they would point at the supervisor's own files."""
        parent = os.path.dirname(target)
        real = os.path.realpath(parent)
        if real != self.env_root and not real.startswith(self.env_root + "/"):
            raise LibCacheError(f"{target} would be written outside the environment root (via {real})")
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o755, exist_ok=True)

    def _make_symlink(self, target: str, link: str) -> None:
        try:
            if os.path.islink(target) and os.readlink(target) == link:
                return
            if os.path.lexists(target) and not os.path.islink(target):
                return  # a real directory where the master has a link (/lib -> usr/lib): paths still resolve
        except OSError:
            pass
        self._make_parent(target)
        tmp = f"{target}.beoboot-{threading.get_ident()}"
        _unlink(tmp)
        os.symlink(link, tmp)
        os.rename(tmp, target)

    # --- eviction -----------------------------------------------------------------------------------------

    def evict(self) -> list[str]:
        """Drop least recently used, unheld objects (and their links and copies) until the cache fits
        max_bytes."""
        dropped = []
        with self._lock:
            total = sum(o.footprint for o in self._objects.values())
            for obj in sorted(self._objects.values(), key=lambda o: o.last_used):
                if total <= self.max_bytes:
                    break
                if obj.holds:
                    continue
                source = os.path.join(self.objects_dir, obj.name)
                try:
                    st = os.stat(source)
                except FileNotFoundError:
                    st = None
                for link in obj.links:
                    try:
                        if st is not None and os.path.samestat(os.lstat(link), st):
                            os.unlink(link)
                    except OSError:
                        pass
                for copy, (dev, inode) in obj.copies.items():
                    try:
                        present = os.lstat(copy)
                        if (present.st_dev, present.st_ino) == (dev, inode):  # not replaced since
                            os.unlink(copy)
                    except OSError:
                        pass
                _unlink(source)
                del self._objects[obj.name]
                total -= obj.footprint
                dropped.append(obj.name)
        return dropped


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
