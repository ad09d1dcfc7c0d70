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

Job paths are resolved as the jobs see them, only through links that are root's choice, and every change is
made through a descriptor of the directory found (stage3.rootpaths): a job cannot point the agent elsewhere.
A link a manifest brings is made with its owner on the master, so a user's link stays one. The node's own
paths (the libcache, and AGENT_FILES) are never a job path: a manifest that names one, or leads to one
through a link, is refused before anything of it is written.

Eviction: least recently used objects that no running job holds go when the total passes `max_bytes`;
their links in the environment root go with them (else the memory would stay in use).

Standard library only (HTTP is agent.httpclient's): runs in the node image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent import protocol as p
from agent.download import sha256_of
from agent.httpclient import HttpError, Pool
from agent.masterlink import MasterBusy, busy_wait
from stage3.accounts import ACCOUNT_FILES
from stage3.names import NAME_FILES, RESOLV_CONF
from stage3.rootpaths import AgentPathError, RootDirectories, RootPathError, is_not_a_directory, stat_at, unlink_at

LIBCACHE_DIR = ".libcache"  # in the environment root
# The environment root's files that the agent writes itself (the job's users and groups, the node's names),
# or that decide for every job what it loads (ld.so.preload) and where names resolve (resolv.conf): one of
# a job's, however reached, would be that job's user's choice for all later jobs
AGENT_FILES = frozenset({*ACCOUNT_FILES.values(), *NAME_FILES, RESOLV_CONF, "etc/ld.so.preload"})

CHUNK = 1 << 20
ACL_XATTR = "system.posix_acl_access"
FETCH_ATTEMPTS = 3
BUSY_PATIENCE = 600.0  # seconds a job's fetches wait out a master that answers 503 (busy), Retry-After by Retry-After
FETCH_WORKERS = 8  # parallel object downloads per job: enough to hide latency, few enough for a busy master
FETCH_TIMEOUT = 30.0  # seconds for the connect, and for each wait for the master's next bytes
HOLD_ATTEMPTS = 3
PLACED_KEPT = 64  # manifests remembered as placed (LibCache._placed): a few commands run again and again


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


def _acl_of(path: str | int) -> bytes:
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
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        durable: bool = True,
        token: Callable[[], str] = lambda: "",
        download_slots: threading.Semaphore | None = None,
        connections: int = FETCH_WORKERS,
    ) -> None:
        self.cache_dir = cache_dir
        self.objects_dir = os.path.join(cache_dir, "objects")
        self.tmp_dir = os.path.join(cache_dir, "tmp")
        self.env_root = os.path.realpath(env_root)
        # the cache as a path in the environment root (".libcache"), where no job path may lead
        self.cache_in_root = os.path.relpath(os.path.realpath(cache_dir), self.env_root)
        self.master_url = master_url.rstrip("/")
        self.max_bytes = max_bytes
        # kept-alive connections for the fetching threads while a fetch lasts, at most `connections` idle
        # (a simulated node, which downloads only when the shared download_slots let it, keeps one)
        self.http = Pool(FETCH_TIMEOUT, keep=connections)
        self.clock = clock
        self.sleep = sleep
        # on a local disk, an object's bytes must be on it before its name is (fsync before rename); in RAM
        # (tmpfs, a diskless node's cache, or a simulated node's scratch directory) there is nothing to wait for
        self.durable = durable
        self.token = token  # the node's link token: the master gives objects only to nodes whose link is up
        # downloads at once: FETCH_WORKERS for a node of its own; a simulator's nodes share a few, as each
        # real node has its own CPU (hundreds of threads in one process would spend the time on the GIL)
        self.download_slots = download_slots or threading.Semaphore(FETCH_WORKERS)
        self.batches = True  # small objects in batches (p.OBJECTS_BATCH_PATH); False for a plain web server
        self._lock = threading.Lock()
        self._objects: dict[str, CachedObject] = {}
        self._fetching: dict[str, threading.Event] = {}
        # manifests placed whole, with the inode and ctime each path (absolute, so a cached job's check joins
        # none) was left with (_unchanged_since_placed)
        self._placed: dict[tuple[p.JobFile, ...], list[tuple[str, tuple[int, int, int]]]] = {}
        self.fetched = 0  # objects fetched since start
        os.makedirs(self.objects_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        os.chmod(cache_dir, 0o700)
        for leftover in os.listdir(self.tmp_dir):  # a crash mid-download: never renamed, never seen
            os.unlink(os.path.join(self.tmp_dir, leftover))
        for name in os.listdir(self.objects_dir):
            st = os.stat(os.path.join(self.objects_dir, name))
            # their order by age, on this run's clock (monotonic, not the wall clock of their mtime)
            last_used = self.clock() - max(0.0, time.time() - st.st_mtime)
            self._objects[name] = CachedObject(name, st.st_size, last_used, inode=(st.st_dev, st.st_ino))

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
        # one patience for the whole job, batches and single objects alike: a master that stays busy fails
        # the job after BUSY_PATIENCE, not after that once per way of asking
        busy_until = self.clock() + BUSY_PATIENCE
        try:
            small = [entry for entry in missing if entry.size <= p.BATCH_OBJECT_MAX] if self.batches else []
            if len(small) > 1:
                self._fetch_batches(small, busy_until)
                left = self.missing(missing)  # what no batch brought: one by one, as the master answers them
            else:
                left = missing
            if left:
                self._fetch_all(left, busy_until)
        finally:
            # an idle node keeps no download connection open: a thousand of them would hold the master's
            # descriptors for nothing (its heartbeat and job link are the two it needs)
            self.http.close()
        return len(missing)

    def _fetch_all(self, missing: list[p.JobFile], busy_until: float) -> None:
        if len(missing) == 1:
            self._fetch_once(missing[0], busy_until)
            return
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
                    self._fetch_once(entry, busy_until)
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

    def _fetch_once(self, entry: p.JobFile, busy_until: float) -> None:
        """Fetch one object, or wait for the thread already fetching it (two jobs wanting the same library).
        When that other fetch did not bring it (a batch, which is best effort, or a fetch that failed),
        this one fetches it itself: another job's failure is not this job's."""
        name = object_name(entry)
        while True:
            with self._lock:
                if name in self._objects:
                    return
                busy = self._fetching.get(name)
                if busy is None:
                    self._fetching[name] = threading.Event()
                    break
            busy.wait()
        try:
            self._fetch(entry, name, busy_until)
        finally:
            with self._lock:
                self._fetching.pop(name).set()

    def _fetch(self, entry: p.JobFile, name: str, busy_until: float) -> None:
        url = self.master_url + p.OBJECTS_PATH.format(digest=entry.sha256)
        problem = ""
        failures = 0
        while failures < FETCH_ATTEMPTS:
            tmp = os.path.join(self.tmp_dir, f"{name}.{threading.get_ident()}")
            try:
                with self.download_slots:
                    digest, size = self._download(url, tmp, entry.size)
            except MasterBusy as busy:
                # the master's admission queue: a wait it asked for, not a failure, for as long as it takes
                _unlink(tmp)
                if not self._waited_out(busy.retry_after, busy_until):
                    problem = f"the master stayed busy for {BUSY_PATIENCE:.0f} s: {busy}"
                    break
                continue
            except (HttpError, OSError) as exc:
                failures += 1
                problem = f"download failed: {str(exc).removeprefix(url + ': ')}"  # the error names the URL below
                _unlink(tmp)
                continue
            if digest != entry.sha256:
                failures += 1
                problem = f"content hash {digest} does not match the manifest"
                _unlink(tmp)
                continue
            self._keep(tmp, entry, name, size)
            return
        raise LibCacheError(f"cannot cache {entry.path} (sha256 {entry.sha256}) from {url}: {problem}")

    def _waited_out(self, retry_after: float, busy_until: float) -> bool:
        """A busy master's Retry-After, slept (jittered, so refused nodes do not all come back at once); False
        without sleeping when it would end past `busy_until` (the job's BUSY_PATIENCE)."""
        if self.clock() + retry_after > busy_until:
            return False
        self.sleep(retry_after * (0.75 + random.random() / 2))
        return True

    def _keep(self, tmp: str, entry: p.JobFile, name: str, size: int) -> None:
        """The object downloaded whole and checked into `tmp`: given its owner and mode, and in the cache."""
        try:
            give_owner_and_mode(tmp, entry)
            st = os.stat(tmp)
            os.rename(tmp, os.path.join(self.objects_dir, name))
        except OSError:
            _unlink(tmp)
            raise
        with self._lock:
            self._objects[name] = CachedObject(name, size, self.clock(), inode=(st.st_dev, st.st_ino))
            self.fetched += 1

    def _fetch_batches(self, small: list[p.JobFile], busy_until: float) -> None:
        """Small objects in as few requests as batches hold them (p.OBJECTS_BATCH_PATH), a busy master's
        Retry-After waited out. Best effort: what a batch does not bring (the master said no, or stayed
        busy, or an object's hash is wrong) is left out of the cache, for the one-by-one fetch that follows
        to fetch, retry and report."""
        batch: list[p.JobFile] = []
        size = 0
        for entry in small:
            if len(batch) == p.BATCH_COUNT_MAX or size + entry.size > p.BATCH_BYTES_MAX:
                self._fetch_batch(batch, busy_until)
                batch, size = [], 0
            batch.append(entry)
            size += entry.size
        if len(batch) > 1:
            self._fetch_batch(batch, busy_until)

    def _fetch_batch(self, entries: list[p.JobFile], busy_until: float) -> None:
        claimed: dict[str, p.JobFile] = {}
        with self._lock:  # objects another thread fetches meanwhile are its to fetch (_fetch_once)
            for entry in entries:
                name = object_name(entry)
                if name not in self._objects and name not in self._fetching and name not in claimed:
                    self._fetching[name] = threading.Event()
                    claimed[name] = entry
        try:
            if not claimed:
                return
            body = p.to_json(p.ObjectBatch(tuple(entry.sha256 for entry in claimed.values()))).encode()
            headers = {p.LINK_TOKEN_HEADER: self.token(), "Content-Type": "application/json"}
            size = sum(entry.size for entry in claimed.values())
            url = self.master_url + p.OBJECTS_BATCH_PATH
            while True:
                with self.download_slots, self.http.stream("POST", url, body=body, headers=headers) as response:
                    busy = busy_wait(response.header("Retry-After")) if response.status == 503 else None
                    data = response.read(size) if response.status == 200 else b""
                if busy is None:
                    break
                if not self._waited_out(busy, busy_until):
                    return
            if len(data) != size:
                return
            at = 0
            for name, entry in claimed.items():
                part = data[at : at + entry.size]
                at += entry.size
                if hashlib.sha256(part).hexdigest() != entry.sha256:
                    continue
                tmp = os.path.join(self.tmp_dir, f"{name}.{threading.get_ident()}")
                try:
                    with open(tmp, "xb") as out:
                        out.write(part)
                        if self.durable:
                            out.flush()
                            os.fsync(out.fileno())
                except OSError:
                    _unlink(tmp)  # ENOSPC in a RAM cache: no part of it stays
                    raise
                self._keep(tmp, entry, name, entry.size)
        except (HttpError, OSError):
            pass  # fetched one by one next
        finally:
            with self._lock:
                for name in claimed:
                    self._fetching.pop(name).set()

    def _download(self, url: str, tmp: str, size: int) -> tuple[str, int]:
        """The object at `url` into `tmp`: (its sha256, its size). No more than `size` bytes (the manifest's)
        are taken: a longer answer is not this object, and must not fill the cache's memory first."""
        digest = hashlib.sha256()
        got = 0
        headers = {p.LINK_TOKEN_HEADER: self.token()}
        with self.http.stream("GET", url, headers=headers) as response:
            if response.status == 503:
                raise MasterBusy(response.text().strip()[:200], busy_wait(response.header("Retry-After")))
            if response.status != 200:
                raise HttpError(f"HTTP {response.status}: {response.text().strip()[:200]}")
            with open(tmp, "xb") as out:
                for chunk in response.chunks(CHUNK, limit=size):
                    digest.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
                if self.durable:
                    out.flush()
                    os.fsync(out.fileno())  # on a disk cache: the rename must not land before the bytes
        return digest.hexdigest(), got

    # --- holds and the environment root -------------------------------------------------------------------

    def ensure_held(self, files: Iterable[p.JobFile]) -> tuple[int, list[str]]:
        """ensure(), then hold(): the number fetched, and the held list for release(). Another job ending
        meanwhile may evict what was just fetched, so the two are tried again until both succeed."""
        files = list(files)
        fetched = 0
        for _ in range(HOLD_ATTEMPTS):
            fetched += self.ensure(files)
            try:
                return fetched, self.hold(files)
            except LibCacheError:
                continue
        raise LibCacheError(
            f"the job's objects were evicted as fast as they came {HOLD_ATTEMPTS} times: "
            "the libcache is too small for the jobs running (libcache_max)"
        )

    def hold(self, files: Iterable[p.JobFile]) -> list[str]:
        """Pin these files' objects for a running job (eviction skips them); give the list to release().
        All or none: LibCacheError, holding nothing, when one is not cached."""
        now = self.clock()
        with self._lock:
            names = {object_name(f) for f in files if f.sha256}
            absent = sorted(name for name in names if name not in self._objects)
            if absent:
                raise LibCacheError(f"object {absent[0]} is not cached: call ensure() first")
            for name in names:
                self._objects[name].holds += 1
                self._objects[name].last_used = now
        return list(names)

    def release(self, held: Iterable[str]) -> None:
        with self._lock:
            for name in held:
                obj = self._objects.get(name)
                if obj is not None:
                    obj.holds = max(0, obj.holds - 1)
        self.evict()

    def job_path(self, path: str) -> str:
        """A manifest path as a path relative to the environment root ("usr/lib/x"); LibCacheError for the
        root itself, the libcache or a file the agent keeps (AGENT_FILES)."""
        relative = os.path.normpath("/" + path).lstrip("/")
        if not relative or relative == LIBCACHE_DIR or relative.startswith(LIBCACHE_DIR + "/"):
            raise LibCacheError(f"job path {path!r} is not allowed: it names the environment root or its cache")
        if relative in AGENT_FILES:
            raise LibCacheError(f"job path /{relative} is the node's own: its agent keeps it, and no job may bring it")
        return relative

    def _directories(self) -> RootDirectories:
        return RootDirectories(self.env_root, self.cache_in_root, AGENT_FILES)

    def materialise(self, files: Iterable[p.JobFile]) -> None:
        """Create every file of the manifest in the environment root: symlinks as given, regular files as
        hard links to their objects. A path that already links the right object is left alone; one that holds
        an older version is replaced by rename, so a job starting meanwhile sees the old or the new file.
        Paths are resolved as the jobs would resolve them, inside the root (stage3.rootpaths). A manifest with
        a path that is, or leads to, the node's own is refused (LibCacheError) before anything is written."""
        files = tuple(files)
        with self._lock:
            if self._unchanged_since_placed(files):
                return
            self._placed.pop(files, None)
        with self._lock, self._directories() as directories:
            placed = [(entry, self.job_path(entry.path)) for entry in files]
            for entry, relative in placed:
                try:
                    directories.check(relative)
                except AgentPathError as exc:
                    raise LibCacheError(f"cannot place {entry.path} in the environment root: {exc}") from None
            where: list[tuple[str, int, str]] | None = []  # each path's directory and name, for _placed
            for entry, relative in placed:
                try:
                    parent, name = directories.parent(relative)
                    if entry.link:
                        _make_symlink(parent, name, entry)
                    elif not entry.sha256:
                        _make_directory(directories, relative, parent, name, entry)
                    else:
                        self._place(self._objects[object_name(entry)], relative, parent, name)
                    if where is not None:
                        where.append((relative, parent, name))
                        if not directories.roots_alone(relative):
                            where = None
                except (OSError, RootPathError) as exc:
                    raise LibCacheError(f"cannot place {entry.path} in the environment root: {exc}") from None
            if (
                where is not None
            ):  # as the paths are left, once all are placed (a file placed in a directory moves its ctime)
                if len(self._placed) >= PLACED_KEPT:
                    self._placed.clear()
                self._placed[files] = [
                    (
                        os.path.join(self.env_root, relative),
                        _placed_as(os.stat(name, dir_fd=parent, follow_symlinks=False)),
                    )
                    for relative, parent, name in where
                ]

    def _unchanged_since_placed(self, files: tuple[p.JobFile, ...]) -> bool:
        """Whether this manifest was placed whole, in directories only root can change, and every path still
        names the very inode it was given, unchanged since (its ctime moves with any link, rename, chmod or
        write). Then placing it again would change nothing, and a cached job skips the walk of every path
        (most of a warm job's time on the node). A plain lstat may follow links the walk would refuse, but
        it only reads, and a path that leads anywhere else shows another inode: the full placement runs."""
        proof = self._placed.get(files)
        if proof is None:
            return False
        for path, placed in proof:
            try:
                st = os.lstat(path)
            except OSError:
                return False
            if _placed_as(st) != placed:
                return False
        return True

    def _place(self, obj: CachedObject, relative: str, parent: int, name: str) -> None:
        """A hard link to the object at `name` (a copy, on another mount), unless it is there already."""
        present = stat_at(name, parent)  # one system call for a path that is already right
        if present is not None and (present.st_dev, present.st_ino) in (obj.inode, obj.copies.get(relative)):
            return  # the object itself, or our copy of it on another mount
        source = os.path.join(self.objects_dir, obj.name)
        tmp = f"{name}.beoboot-{threading.get_ident()}"
        unlink_at(tmp, parent)
        try:
            os.link(source, tmp, dst_dir_fd=parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # the path is under another mount of the environment root (/tmp is its own tmpfs): a copy,
            # put in place the same way
            _copy_object(source, tmp, parent)
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError:
            unlink_at(tmp, parent)
            raise
        placed = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if (placed.st_dev, placed.st_ino) == obj.inode:
            obj.links.add(relative)
        else:
            obj.copies[relative] = (placed.st_dev, placed.st_ino)

    # --- eviction -----------------------------------------------------------------------------------------

    def evict(self) -> list[str]:
        """Drop least recently used, unheld objects (and their links and copies) until the cache fits
        max_bytes. A path a running job's object had before a later job replaced it gets that object back."""
        dropped: list[CachedObject] = []
        with self._lock:
            if sum(o.footprint for o in self._objects.values()) <= self.max_bytes:
                return []  # the common case, after every job: nothing to walk
        with self._lock, self._directories() as directories:
            total = sum(o.footprint for o in self._objects.values())
            for obj in sorted(self._objects.values(), key=lambda o: o.last_used):
                if total <= self.max_bytes:
                    break
                if obj.holds:
                    continue
                claims = [(path, obj.inode) for path in obj.links] + list(obj.copies.items())
                for relative, inode in claims:
                    _remove_if(directories, relative, inode)
                _unlink(os.path.join(self.objects_dir, obj.name))
                del self._objects[obj.name]
                total -= obj.footprint
                dropped.append(obj)
            if dropped:
                self._placed.clear()  # what it removes, and puts back, is no longer as placed
            for obj in dropped:
                for relative in (*obj.links, *obj.copies):
                    self._put_back(directories, relative)
        return [obj.name for obj in dropped]

    def _put_back(self, directories: RootDirectories, relative: str) -> None:
        """The object a running job holds for `relative`, placed there again (best effort)."""
        holder = next(
            (o for o in self._objects.values() if o.holds and (relative in o.links or relative in o.copies)), None
        )
        if holder is None:
            return
        try:
            parent, name = directories.parent(relative, create=False)
            if stat_at(name, parent) is None:  # not since taken by another object
                holder.copies.pop(relative, None)
                self._place(holder, relative, parent, name)
        except (OSError, RootPathError):
            pass


def _remove_if(directories: RootDirectories, relative: str, inode: tuple[int, int]) -> None:
    """Unlink the job path if it is still the given file (not replaced since)."""
    try:
        parent, name = directories.parent(relative, create=False)
        present = stat_at(name, parent)
        if present is not None and (present.st_dev, present.st_ino) == inode:
            os.unlink(name, dir_fd=parent)
    except (OSError, RootPathError):
        pass


def _copy_object(source: str, tmp: str, parent: int) -> None:
    """A copy of an object as `tmp` in the directory: made 0600 and root's, so no one reads it before it has
    the object's owner, mode and ACL (which the object has from the manifest: give_owner_and_mode)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(source, "rb") as src, open(os.open(tmp, flags, 0o600, dir_fd=parent), "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
        out.flush()
        st = os.fstat(src.fileno())
        os.fchown(out.fileno(), st.st_uid, st.st_gid)
        os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))  # after the owner: chown clears setuid bits
        acl = _acl_of(source)
        if acl:
            os.setxattr(out.fileno(), ACL_XATTR, acl)


def _make_directory(directories: RootDirectories, relative: str, parent: int, name: str, entry: p.JobFile) -> None:
    """A directory with the master's mode, owner and ACL; one an earlier job made differently (on the way to
    a file, as root's 0755) gets them now, and loses an ACL the master's no longer has. A link that is root's
    choice (/lib -> usr/lib on the node, a directory on the master) or a file where the master has a
    directory is left alone; so are mount points (/tmp, /dev). Any other link gives way to the directory:
    paths are never walked through it, and the master's directory is what the user has now."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    present = stat_at(name, parent)
    if present is not None and stat.S_ISLNK(present.st_mode) and not directories.trusts(relative):
        unlink_at(name, parent)
    made = False
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        os.mkdir(name, 0o700, dir_fd=parent)  # no one else's until it has its owner and mode
        fd = os.open(name, flags, dir_fd=parent)
        made = True
    except OSError as exc:
        if is_not_a_directory(exc):
            return
        raise
    try:
        st = os.fstat(fd)
        if st.st_dev != os.fstat(parent).st_dev:
            return  # a mount point
        mode = entry.mode & 0o7777 or 0o755
        wanted_acl = bytes.fromhex(entry.acl)
        present_acl = _acl_of(fd)
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, present_acl) == (mode, entry.uid, entry.gid, wanted_acl):
            return  # as it should be
        if not made:  # which links below it are root's choice may change with its owner and mode
            directories.forget()
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, mode)
        if wanted_acl:  # a directory is no shared object: its ACL as the master has it
            os.setxattr(fd, ACL_XATTR, wanted_acl)
        elif present_acl:
            os.removexattr(fd, ACL_XATTR)
    finally:
        os.close(fd)


def _make_symlink(parent: int, name: str, entry: p.JobFile) -> None:
    """The link as the master has it, with its owner there: job paths pass only through links that are
    root's choice (stage3.rootpaths), so a user's link on the master is the user's here, and one a job made
    (a venv made on the node) is made again. It replaces a file, but not a real directory where the master
    has a link (/lib -> usr/lib on the node, a directory made earlier): paths through it still resolve."""
    present = stat_at(name, parent)
    if present is not None:
        as_wanted = (present.st_uid, present.st_gid, present.st_nlink) == (entry.uid, entry.gid, 1)
        if stat.S_ISLNK(present.st_mode) and as_wanted and os.readlink(name, dir_fd=parent) == entry.link:
            return
        if stat.S_ISDIR(present.st_mode):
            return
    tmp = f"{name}.beoboot-{threading.get_ident()}"
    unlink_at(tmp, parent)
    os.symlink(entry.link, tmp, dir_fd=parent)
    try:
        os.chown(tmp, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except OSError:
        unlink_at(tmp, parent)
        raise


def _placed_as(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
