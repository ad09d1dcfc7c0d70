"""Reproducible initramfs images: a FileList written as a newc cpio by libarchive, then compressed."""

# Reproducible means the bytes depend only on the FileList's contents and `mtime`: entries go in sorted
# order, every mtime is `mtime` (SOURCE_DATE_EPOCH), owners are 0:0, device numbers of the archive are 0,
# and inode numbers are assigned sequentially in that order instead of copied from the build host.
#
# Device nodes are plain archive entries (no mknod), so building needs no root.
#
# Hard links: two FILE entries whose sources are one build-host inode (and have one mode) become one
# link group, like GNU cpio and bsdtar write newc: every member carries the same inode number and
# nlink = group size, and only the last member carries the data (libarchive's LINKIFY_LIKE_NEW_CPIO
# strategy; the kernel's init/initramfs.c links later members to the first and fills in the data when it
# arrives). libarchive's newc writer writes ino/nlink as given and does no link detection itself.
#
# Fail closed: libarchive silently clamps a field that does not fit newc's 8 hex digits (an mtime after
# 2106 becomes 0xffffffff) and cuts a name at a NUL. Every entry is checked first against what newc can
# hold and what the node's unpacker (agent/cpio.py) accepts; anything else is an UnrepresentableError
# naming the entry, so whatever this writes, the node unpacks to the same tree.

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import posixpath
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

import libarchive
from libarchive import ffi
from libarchive.entry import ArchiveEntry, FileType
from libarchive.exception import ArchiveError

from agent.cpio import HEADER_LEN, TRAILER, CpioError, parse_header
from beoboot.errors import BeobootError, ImageError, SysrootError
from beoboot.image.compress import Compression, check_level, compress, decompress
from beoboot.image.filelist import Entry, FileList, Kind, normalise
from beoboot.image.partcache import PartCache

_FILETYPE = {
    Kind.FILE: FileType.REGULAR_FILE,
    Kind.DIR: FileType.DIRECTORY,
    Kind.SYMLINK: FileType.SYMBOLINK_LINK,
    Kind.CHARDEV: FileType.CHAR_DEVICE,
}
_KIND = {int(filetype): kind for kind, filetype in _FILETYPE.items()}


# Entry setters that libarchive-c 5.3 does not wrap. Pathname and symlink are copied as raw bytes (the
# `copy_` setters) so names are written exactly as the build host spells them, with no charset step.
def _bind(name: str, argtypes: list[type]) -> Callable[..., None]:
    function = getattr(ffi.libarchive, name)
    function.argtypes = argtypes
    function.restype = None
    return function


_set_ino = _bind("archive_entry_set_ino64", [ctypes.c_void_p, ctypes.c_int64])
_set_nlink = _bind("archive_entry_set_nlink", [ctypes.c_void_p, ctypes.c_uint])
_copy_pathname = _bind("archive_entry_copy_pathname", [ctypes.c_void_p, ctypes.c_char_p])
_copy_symlink = _bind("archive_entry_copy_symlink", [ctypes.c_void_p, ctypes.c_char_p])
_get_ino = ffi.libarchive.archive_entry_ino64
_get_ino.argtypes, _get_ino.restype = [ctypes.c_void_p], ctypes.c_int64
_get_nlink = ffi.libarchive.archive_entry_nlink
_get_nlink.argtypes, _get_nlink.restype = [ctypes.c_void_p], ctypes.c_uint


NEWC_MAX = 0xFFFFFFFF  # every newc header field is 8 hex digits
MAX_NAME_BYTES = 4095  # PATH_MAX with its NUL: the node's unpacker reads no longer name
MAX_COMPONENT_BYTES = 255  # NAME_MAX
MAX_MAJOR, MAX_MINOR = (1 << 12) - 1, (1 << 20) - 1  # a Linux dev_t


class UnrepresentableError(BeobootError):
    """An entry (or the mtime) that a newc archive cannot hold, or that the node's unpacker refuses."""


@dataclass(frozen=True)
class ImageStats:
    entries: int
    uncompressed_size: int
    compressed_size: int
    compression: Compression


@dataclass(frozen=True)
class InodePlan:
    """How one entry is written: its archive inode, link count, and whether it carries the file data."""

    ino: int
    nlink: int
    carries_data: bool = True


def plan_inodes(entries: list[Entry], identity: Callable[[str], tuple[int, int]]) -> dict[str, InodePlan]:
    """Assign archive inode numbers (1, 2, ... in entry order) and group hard links.

    `identity(source)` gives the build-host (st_dev, st_ino) of a source file. FILE entries with the
    same identity and mode share the first member's inode; the last member of a group carries the data.
    """
    groups: dict[tuple[int, int, int], list[Entry]] = {}
    for entry in entries:
        if entry.kind == Kind.FILE and entry.source is not None and entry.data is None:
            groups.setdefault((*identity(entry.source), entry.mode), []).append(entry)
    group_of = {member.path: members for members in groups.values() if len(members) > 1 for member in members}

    plans: dict[str, InodePlan] = {}
    next_ino = 1
    for entry in entries:
        members = group_of.get(entry.path)
        if members is None:
            plans[entry.path] = InodePlan(next_ino, 2 if entry.kind == Kind.DIR else 1)
            next_ino += 1
        elif members[0] is entry:
            for member in members:
                plans[member.path] = InodePlan(next_ino, len(members), carries_data=member is members[-1])
            next_ino += 1
    return plans


def _host_identity(source: str) -> tuple[int, int]:
    try:
        st = os.stat(source)
    except OSError as e:
        raise SysrootError(f"cannot read source file {source}: {e.strerror}", hint="rebuild the file list") from e
    return st.st_dev, st.st_ino


def _read_source(entry: Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    assert entry.source is not None
    try:
        return Path(entry.source).read_bytes()
    except OSError as e:
        raise SysrootError(
            f"cannot read {entry.source} (for {entry.path}): {e.strerror}", hint="check the sysroot and rebuild"
        ) from e


def archive_name(path: str) -> bytes:
    """The name stored in the cpio for an absolute FileList path: relative, and "." for the root."""
    relative = path.lstrip("/")
    return os.fsencode(relative or ".")


def check_mtime(mtime: int) -> None:
    if not 0 <= mtime <= NEWC_MAX:
        raise UnrepresentableError(
            f"mtime {mtime} (source_date_epoch) does not fit a newc header (0 to {NEWC_MAX}, 1970 to 2106)",
            hint="set source_date_epoch to a time from 1970 to 2106",
        )


def _refuse(entry: Entry, what: str) -> UnrepresentableError:
    source = f" (from {entry.source})" if entry.source else ""
    return UnrepresentableError(f"cannot write {entry.path!r}{source} into an image: {what}", hint=_HINT)


_HINT = "rename or remove it in the sysroot or the config, or leave it out of the image"


def _utf8(entry: Entry, text: str, what: str) -> bytes:
    if "\0" in text:
        raise _refuse(entry, f"its {what} has a NUL byte")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(entry, f"its {what} is not UTF-8") from None


def check_entry(entry: Entry, plan: InodePlan, kinds: dict[str, Kind]) -> None:
    """Refuse what newc cannot hold or the node's unpacker refuses (file sizes are checked as read)."""
    _utf8(entry, entry.path, "path")
    # FileList paths are absolute and normalised; the stored name is relative, with no ".." to leave by.
    if not entry.path.startswith("/") or normalise(entry.path) != entry.path or ".." in entry.path.split("/"):
        raise _refuse(entry, "its path is not a normalised absolute path")
    name = archive_name(entry.path)
    if len(name) > MAX_NAME_BYTES:
        raise _refuse(entry, f"its path is {len(name)} bytes (at most {MAX_NAME_BYTES})")
    if any(len(part) > MAX_COMPONENT_BYTES for part in name.split(b"/")):
        raise _refuse(entry, f"a component of its path is longer than {MAX_COMPONENT_BYTES} bytes")
    parent = posixpath.dirname(entry.path)
    if entry.path != "/" and kinds.get(parent, Kind.DIR) != Kind.DIR:
        raise _refuse(entry, f"its parent {parent} is a {kinds[parent]} in this image, not a directory")
    if not 0 <= entry.mode <= 0o7777:
        raise _refuse(entry, f"mode {entry.mode:#o} is not permission bits")
    if not (0 < plan.ino <= NEWC_MAX and 0 < plan.nlink <= NEWC_MAX):
        raise _refuse(entry, f"inode {plan.ino} or link count {plan.nlink} does not fit a newc header")
    if entry.kind == Kind.SYMLINK:
        target = _utf8(entry, entry.target or "", "symlink target")
        if not 0 < len(target) <= MAX_NAME_BYTES:
            raise _refuse(entry, f"its symlink target is {len(target)} bytes (1 to {MAX_NAME_BYTES})")
    if entry.kind == Kind.CHARDEV:
        major, minor = entry.rdev or (-1, -1)
        if not (0 <= major <= MAX_MAJOR and 0 <= minor <= MAX_MINOR):
            raise _refuse(entry, f"device number {major}:{minor} does not fit a Linux dev_t")


def _checked_size(entry: Entry, size: int) -> int:
    if size > NEWC_MAX:
        raise _refuse(entry, f"it is {size} bytes; a newc archive holds files up to {NEWC_MAX} bytes")
    return size


def build_cpio(filelist: FileList, mtime: int) -> tuple[bytes, int]:
    """The uncompressed newc cpio of `filelist` and its entry count."""
    check_mtime(mtime)
    entries = list(filelist.entries())
    plans = plan_inodes(entries, _host_identity)
    kinds = {entry.path: entry.kind for entry in entries}
    for entry in entries:
        check_entry(entry, plans[entry.path], kinds)
    out = bytearray()

    def collect(chunk: bytes) -> int:
        out.extend(chunk)
        return len(chunk)

    # bytes_in_last_block=1 (set by custom_writer): no padding after the trailer beyond newc's own
    # 4-byte alignment, so images can be concatenated as the kernel allows.
    with libarchive.custom_writer(collect, "cpio_newc") as archive:
        for entry in entries:
            _write_entry(archive._pointer, entry, plans[entry.path], mtime)
    return bytes(out), len(entries)


def _write_entry(archive_p: int, entry: Entry, plan: InodePlan, mtime: int) -> None:
    data = b""
    if entry.kind == Kind.FILE and plan.carries_data:
        _checked_size(entry, _source_size(entry))  # before reading: a 5 GB file is refused, not loaded
        data = _read_source(entry)
        _checked_size(entry, len(data))  # it may have grown since
    try:
        _write_checked_entry(archive_p, entry, plan, mtime, data)
    except ArchiveError as e:  # anything else libarchive refuses
        raise _refuse(entry, str(e)) from None


def _source_size(entry: Entry) -> int:
    if entry.data is not None:
        return len(entry.data)
    assert entry.source is not None
    try:
        return os.stat(entry.source).st_size
    except OSError as e:
        raise SysrootError(
            f"cannot read {entry.source} (for {entry.path}): {e.strerror}", hint="check the sysroot and rebuild"
        ) from e


def _write_checked_entry(archive_p: int, entry: Entry, plan: InodePlan, mtime: int, data: bytes) -> None:
    header = ArchiveEntry(filetype=_FILETYPE[entry.kind], perm=entry.mode, uid=0, gid=0, mtime=mtime)
    pointer = ctypes.c_void_p(header._entry_p)
    _copy_pathname(pointer, archive_name(entry.path))
    _set_ino(pointer, plan.ino)
    _set_nlink(pointer, plan.nlink)
    if entry.kind == Kind.SYMLINK:
        assert entry.target is not None
        _copy_symlink(pointer, os.fsencode(entry.target))
    if entry.kind == Kind.CHARDEV:
        assert entry.rdev is not None
        header.rdev = entry.rdev
    header.size = len(data)
    ffi.write_header(archive_p, header._entry_p)
    if data:
        ffi.write_data(archive_p, data, len(data))
    ffi.write_finish_entry(archive_p)


def write_image(
    filelist: FileList,
    out_path: str | os.PathLike[str],
    compression: Compression,
    mtime: int,
    level: int | None = None,
    *,
    shared: Callable[[Entry], bool] | None = None,
    compressor: PartCompressor | None = None,
) -> ImageStats:
    """Write `filelist` as a compressed cpio to `out_path`, atomically (a temp file, then rename).

    With `shared`, the image is written in parts (see image_parts): the entries `shared` picks go in
    chunks after the image's own, and `compressor` compresses each part once per build."""
    parts = image_parts(filelist, shared) if shared is not None else [filelist]
    cpios = [build_cpio(part, mtime)[0] for part in parts]
    compressor = compressor or PartCompressor(None)
    jobs = [compressor.submit(cpio, Compression(compression), level) for cpio in cpios]
    image = b"".join(job.result() for job in jobs)
    out_path = Path(out_path)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # served by TFTP/HTTP: readable, whatever the umask
        os.replace(tmp_name, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return ImageStats(len(filelist), sum(map(len, cpios)), len(image), Compression(compression))


# An image the kernel unpacks may be several cpio archives, each compressed on its own, one after another
# (Documentation/driver-api/early-userspace/buffer-format.rst). Written so, the files two images share
# (stage 1 and stage 2 carry the same drivers and libraries: 45 of their 48 MiB) are compressed once per
# build, and one image's parts compress on every core: xz, the smallest, is also the slowest.
# The image's own part comes first and holds every directory, so each later part unpacks into them.
SHARED_CHUNK = 16 << 20  # uncompressed bytes; xz -6 over two 17 MiB chunks is 0.3% larger than over one


def image_parts(filelist: FileList, shared: Callable[[Entry], bool]) -> list[FileList]:
    """The image's own entries, then the `shared` files in path order, cut into chunks of about
    SHARED_CHUNK bytes: two images with the same shared files get byte-identical chunks."""
    own, chunks = FileList(), [FileList()]
    size = 0
    for entry in filelist.entries():
        if entry.kind != Kind.FILE or not shared(entry):
            own.add_entry(entry)
            continue
        if size >= SHARED_CHUNK:
            chunks.append(FileList())
            size = 0
        chunks[-1].add_entry(entry)
        size += entry.size()
    return [own, *(chunk for chunk in chunks if len(chunk))]


class PartCompressor:
    """Compresses each distinct part once per build, and through `cache` once across builds: a second
    image with the same bytes waits for the first one's job. Without a pool, compresses in the caller's
    thread."""

    def __init__(self, pool: Executor | None, cache: PartCache | None = None) -> None:
        self._pool = pool
        self._cache = cache or PartCache(None)
        self._jobs: dict[tuple[bytes, Compression, int | None], Future[bytes]] = {}
        self._lock = threading.Lock()

    def submit(self, cpio: bytes, compression: Compression, level: int | None) -> Future[bytes]:
        digest = hashlib.sha256(cpio).digest()
        key = (digest, compression, level)
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                work = functools.partial(compress, cpio, compression, level)
                if compression != Compression.NONE:  # nothing to save
                    name = f"{digest.hex()}-{compression.value}-{check_level(compression, level)}"
                    work = functools.partial(self._cache.compressed, name, work)
                if self._pool is None:
                    job = Future()
                    job.set_result(work())
                else:
                    job = self._pool.submit(work)
                self._jobs[key] = job
        return job


def split_archives(cpio: bytes) -> list[bytes]:
    """The cpio archives one after another in an (uncompressed) image, each ending with its trailer;
    the NUL bytes the kernel skips between them are dropped. Fields are aligned on the image's offsets."""
    archives, start = [], 0
    while start < len(cpio):
        if cpio[start] == 0:
            start += 1
            continue
        end, name = start, b""
        while name != _TRAILER_NAME:
            try:
                header, namesize = parse_header(cpio[end : end + HEADER_LEN], end)
            except CpioError as e:
                raise ImageError(f"not a readable cpio archive: {e}", hint="rebuild the image") from None
            name = cpio[end + HEADER_LEN : end + HEADER_LEN + namesize]
            end = _aligned(_aligned(end + HEADER_LEN + namesize) + header.size)
            if end > len(cpio):
                raise ImageError("not a readable cpio archive: it ends inside an entry", hint="rebuild the image")
        archives.append(cpio[start:end])
        start = end
    return archives


_TRAILER_NAME = TRAILER.encode() + b"\0"


def _aligned(offset: int) -> int:
    return offset + (-offset % 4)


@dataclass(frozen=True)
class ListedEntry:
    """One member of an image as read back. For a hard link group, every member reports the group's
    size and data; `nlink` > 1 and a shared `ino` show the grouping."""

    path: str  # absolute, like FileList paths
    kind: Kind
    mode: int  # permission bits
    size: int
    target: str | None = None
    rdev: tuple[int, int] | None = None
    ino: int = 0
    nlink: int = 1
    _load: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    def data(self) -> bytes:
        """The file's bytes (read on demand: listing a large image does not copy every file)."""
        return self._load() if self._load is not None else b""


def _listed_path(name: str) -> str:
    return posixpath.normpath("/" + name)  # "./usr" and "usr" -> "/usr", "." -> "/"


def _iter_cpio(cpio: bytes) -> Iterator[ArchiveEntry]:
    try:
        with libarchive.memory_reader(cpio, format_name="cpio") as archive:
            yield from archive
    except ArchiveError as e:
        raise ImageError(f"not a readable cpio archive: {e}", hint="rebuild the image") from e


def _data_at(cpio: bytes, index: int) -> bytes:
    for position, entry in enumerate(_iter_cpio(cpio)):
        if position == index:
            return b"".join(entry.get_blocks())
    raise AssertionError(f"entry {index} vanished from an in-memory archive")


@dataclass(frozen=True)
class _Header:
    index: int
    path: str
    kind: Kind
    mode: int
    size: int
    target: str | None
    rdev: tuple[int, int] | None
    ino: int
    nlink: int


def _headers(cpio: bytes) -> Iterator[_Header]:
    for index, entry in enumerate(_iter_cpio(cpio)):
        path = _listed_path(entry.pathname)
        kind = _KIND.get(entry.filetype)
        if kind is None:
            raise ImageError(f"{path} in the image is a {stat.filemode(entry.mode)} entry, which beoboot never writes")
        pointer = ctypes.c_void_p(entry._entry_p)
        yield _Header(
            index=index,
            path=path,
            kind=kind,
            mode=stat.S_IMODE(entry.mode),
            size=entry.size or 0,
            target=entry.linkpath if kind == Kind.SYMLINK else None,
            rdev=(entry.rdevmajor, entry.rdevminor) if kind == Kind.CHARDEV else None,
            ino=_get_ino(pointer),
            nlink=_get_nlink(pointer),
        )


def list_cpio(cpio: bytes) -> list[ListedEntry]:
    """Every member of an uncompressed image, in archive order, across the archives it is made of."""
    return [entry for archive in split_archives(cpio) for entry in _list_archive(archive)]


def _list_archive(cpio: bytes) -> list[ListedEntry]:
    headers = list(_headers(cpio))
    # A link group's data sits on one member (the last, in newc); every member reports it.
    group_data = {h.ino: h for h in headers if h.kind == Kind.FILE and h.nlink > 1 and h.size > 0}
    listed = []
    for h in headers:
        holder = group_data.get(h.ino, h) if h.kind == Kind.FILE and h.nlink > 1 else h
        load: Callable[[], bytes] | None = None
        if h.kind == Kind.FILE:
            load = functools.partial(_data_at, cpio, holder.index) if holder.size else bytes
        listed.append(ListedEntry(h.path, h.kind, h.mode, holder.size, h.target, h.rdev, h.ino, h.nlink, load))
    return listed


def read_image(path: str | os.PathLike[str]) -> list[ListedEntry]:
    """Every member of an image file, whatever compressor it used (found by magic)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}") from e
    return list_cpio(decompress(raw))


def extract_file(image: str | os.PathLike[str], path: str) -> bytes:
    """The bytes of one file in an image."""
    wanted = posixpath.normpath("/" + path.lstrip("/"))
    for entry in read_image(image):
        if entry.path == wanted:
            if entry.kind != Kind.FILE:
                raise ImageError(f"{wanted} in {image} is a {entry.kind}, not a file")
            return entry.data()
    raise ImageError(f"{wanted} is not in {image}", hint="list the image with `beoboot inspect`")
