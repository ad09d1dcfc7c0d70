"""Find the shared libraries a program loads, the way glibc's ld.so would, inside a sysroot, without running it."""

# The search order is glibc's (elf/dl-load.c, _dl_map_object), for each DT_NEEDED name of an object L:
#   1. a name with a '/' is a path ($ORIGIN etc. expanded);
#   2. if L has no DT_RUNPATH: the DT_RPATH of L, of the object that loaded L, and so on up to the program,
#      then the program's DT_RPATH (an object's DT_RPATH is ignored when it has a DT_RUNPATH);
#   3. L's own DT_RUNPATH (never its loader's: RUNPATH applies only to the object's direct needs);
#   4. ld.so.cache, which ldconfig builds from the ld.so.conf directories, then the system directories,
#      dropping a directory already seen under another name (same inode), first directory winning;
#   5. the system directories (/lib/<triplet>, /usr/lib/<triplet>, /lib, /usr/lib on a multiarch tree).
# Steps 4 and 5 are skipped for an object linked with -z nodeflib. A file of the wrong ELF class, byte order or
# machine is skipped and the search goes on, as glibc does. A name already loaded (by the name asked for, its
# path, or its DT_SONAME), or a file already loaded under another path, is not loaded twice; objects are
# loaded breadth first, so `closure` lists them in ld.so's link-map order.
#
# ld.so.cache itself is not read: it is a build artefact that may be stale or missing in a debootstrap tree,
# and ld.so.conf says the same thing. Not modelled: LD_LIBRARY_PATH and LD_PRELOAD (the build host's
# environment says nothing about the node's), and the glibc-hwcaps / legacy hwcap subdirectories, which depend
# on the CPU of the node rather than of the build host.

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from beoboot.errors import ElfError, MissingLibraryError, SysrootError
from beoboot.log import log
from beoboot.regularfile import open_regular, open_regular_fd, read_regular
from beoboot.resolve.elf import ELF_MAGIC, ElfClass, ElfIdentity, ElfInfo, parse_elf
from beoboot.resolve.sysroot import Sysroot

LD_SO_CONF = "/etc/ld.so.conf"
MAX_CONF_DEPTH = 16  # ld.so.conf includes nested deeper than this are a loop
MAX_CONF_SIZE = 1 << 20  # one ld.so.conf file; a larger one is no configuration


@dataclass(frozen=True)
class Needed:
    path: str  # sysroot-absolute path as the loader finds it, e.g. /lib/x86_64-linux-gnu/libz.so.1
    needed_by: str | None  # sysroot-absolute path of the object that needs it; None for the roots
    soname: str | None  # the DT_NEEDED name (or interp) that led here


# -- what a machine's ld.so searches by default -----------------------------------------------------------


@dataclass(frozen=True)
class Abi:
    triplet: str  # Debian multiarch tuple
    platform: str  # what the kernel passes as AT_PLATFORM, for $PLATFORM


EM_386, EM_ARM, EM_PPC64, EM_S390, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 40, 21, 22, 62, 183, 243

# (e_machine, class, little endian) -> ABI. Triplets from Debian's multiarch table (wiki.debian.org/Multiarch/Tuples).
ABIS: dict[tuple[int, ElfClass, bool], Abi] = {
    (EM_X86_64, ElfClass.ELF64, True): Abi("x86_64-linux-gnu", "x86_64"),
    (EM_X86_64, ElfClass.ELF32, True): Abi("x86_64-linux-gnux32", "x86_64"),
    (EM_386, ElfClass.ELF32, True): Abi("i386-linux-gnu", "i686"),
    (EM_AARCH64, ElfClass.ELF64, True): Abi("aarch64-linux-gnu", "aarch64"),
    (EM_ARM, ElfClass.ELF32, True): Abi("arm-linux-gnueabihf", "v7l"),
    (EM_PPC64, ElfClass.ELF64, True): Abi("powerpc64le-linux-gnu", "powerpc64le"),
    (EM_PPC64, ElfClass.ELF64, False): Abi("powerpc64-linux-gnu", "powerpc64"),
    (EM_S390, ElfClass.ELF64, False): Abi("s390x-linux-gnu", "s390x"),
    (EM_RISCV, ElfClass.ELF64, True): Abi("riscv64-linux-gnu", "riscv64"),
}


def abi_for(identity: ElfIdentity) -> Abi | None:
    return ABIS.get((identity.machine, identity.elf_class, identity.little_endian))


def system_dirs(identity: ElfIdentity, multiarch: bool) -> list[str]:
    """The directories ld.so searches last (its SYSTEM_DIRS), for a multiarch (Debian) tree or not (Fedora)."""
    abi = abi_for(identity)
    if multiarch and abi is not None:
        return [f"/lib/{abi.triplet}", f"/usr/lib/{abi.triplet}", "/lib", "/usr/lib"]
    if identity.elf_class is ElfClass.ELF64:
        return ["/lib64", "/usr/lib64"]
    return ["/lib", "/usr/lib"]


# -- dynamic string tokens ---------------------------------------------------------------------------------

_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


def expand_dst(entry: str, origin: str, lib: str, platform: str | None) -> str | None:
    """Expand $ORIGIN, $LIB, $PLATFORM (and ${...}) in one RPATH/RUNPATH entry or DT_NEEDED path.

    None when the entry cannot be used: glibc drops an element whose token has no value. An unknown `$X` is
    kept as written, as glibc does.
    """
    values = {"ORIGIN": origin, "LIB": lib, "PLATFORM": platform}
    unusable = False

    def replace(match: re.Match[str]) -> str:
        nonlocal unusable
        value = values[match.group(1) or match.group(2)]
        if not value:
            unusable = True
            return ""
        return value

    expanded = _DST.sub(replace, entry)
    return None if unusable else expanded


# -- ld.so.conf ------------------------------------------------------------------------------------------


class ConfKind(StrEnum):
    DIRECTORY = "directory"
    INCLUDE = "include"


@dataclass(frozen=True)
class ConfEntry:
    kind: ConfKind
    value: str  # a directory, or a glob pattern already made absolute


def parse_ld_so_conf(text: str, conf_path: str) -> list[ConfEntry]:
    """The entries of one ld.so.conf file, as ldconfig's parse_conf reads them.

    '#' starts a comment anywhere; `include` takes blank-separated globs, relative ones taken from the
    directory of `conf_path`; `hwcap` lines are obsolete and ignored; relative directories are ignored, as
    ldconfig ignores them for the cache.
    """
    entries: list[ConfEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        keyword, _, rest = line.replace("\t", " ").partition(" ")
        if keyword == "include" and rest:
            for pattern in rest.split():
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(conf_path), pattern)
                entries.append(ConfEntry(ConfKind.INCLUDE, pattern))
        elif keyword.lower() == "hwcap" and rest:
            continue
        elif line.startswith("/"):
            directory = line.rstrip("/") or "/"
            entries.append(ConfEntry(ConfKind.DIRECTORY, directory))
    return entries


def sysroot_glob(sysroot: Sysroot, pattern: str) -> list[str]:
    """glob(3) inside the sysroot: links in the pattern's directories are followed inside the sysroot."""
    matches = ["/"]
    for part in [p for p in pattern.split("/") if p]:
        following: list[str] = []
        for base in matches:
            if any(ch in part for ch in "*?["):
                names = [n for n in sysroot.listdir(base) if not n.startswith(".") or part.startswith(".")]
                following.extend(posixpath.join(base, n) for n in fnmatch.filter(names, part))
            else:
                following.append(posixpath.join(base, part))
        matches = following
    return sorted(m for m in matches if sysroot.exists(m))


def read_ld_so_conf(sysroot: Sysroot, conf_path: str = LD_SO_CONF, _depth: int = 0) -> list[str]:
    """The library directories of ld.so.conf and its includes, in order (duplicates kept)."""
    if _depth > MAX_CONF_DEPTH:
        log.warning("ld.so.conf: includes nested deeper than %d at %s; ignoring it", MAX_CONF_DEPTH, conf_path)
        return []
    try:
        data = read_regular(sysroot.host(sysroot.resolve(conf_path).real), MAX_CONF_SIZE, follow=False)
    except (OSError, SysrootError):
        return []
    text = data.decode(errors="surrogateescape")
    dirs: list[str] = []
    for entry in parse_ld_so_conf(text, conf_path):
        if entry.kind is ConfKind.DIRECTORY:
            dirs.append(entry.value)
        else:
            for included in sysroot_glob(sysroot, entry.value):
                dirs.extend(read_ld_so_conf(sysroot, included, _depth + 1))
    return dirs


# -- the resolver ----------------------------------------------------------------------------------------


def is_elf(sysroot: Sysroot, path: str) -> bool:
    """Whether the file at this sysroot path (links followed) starts with the ELF magic."""
    try:
        with open_regular(sysroot.host(sysroot.resolve(path).real), follow=False) as handle:
            return handle.read(4) == ELF_MAGIC
    except (OSError, SysrootError):
        return False


@dataclass(eq=False)
class _Loaded:
    """One object in a simulated link map."""

    path: str  # as the loader found it
    info: ElfInfo
    origin: str  # $ORIGIN
    loader: _Loaded | None  # the object whose DT_NEEDED brought this one in (glibc's l_loader)
    rpath_dirs: tuple[str, ...] = field(default=())
    runpath_dirs: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _SearchKey:
    name: str
    explicit_dirs: tuple[str, ...]  # RPATH chain or RUNPATH, already expanded
    default_dirs: bool  # False for -z nodeflib
    identity: ElfIdentity | None  # None: accept any ELF


class LibraryResolver:
    def __init__(
        self, sysroot: Sysroot, conf_path: str = LD_SO_CONF, checkpoint: Callable[[], None] = lambda: None
    ) -> None:
        """`checkpoint` is called before each file or directory is read: it may raise to end a search that
        takes too long (beoserv's time budget for describing a job)."""
        self.sysroot = sysroot
        self.checkpoint = checkpoint
        self.conf_dirs = read_ld_so_conf(sysroot, conf_path)
        self._infos: dict[str, ElfInfo | ElfError] = {}  # real path -> parse result
        self._reals: dict[str, str | None] = {}  # path -> real path, None when missing
        self._listings: dict[str, frozenset[str]] = {}  # directory -> names in it
        self._searches: dict[_SearchKey, str | None] = {}
        self._cache_dirs: dict[ElfIdentity, list[str]] = {}
        self._system_dirs: dict[ElfIdentity, list[str]] = {}
        self._seen_dirs: dict[str, None] = {}  # RPATH/RUNPATH directories met so far, in order
        self._unusable: dict[str, str] = {}  # a file of a searched name that could not be used -> why

    # -- public ------------------------------------------------------------------------------------------

    @property
    def search_dirs(self) -> list[str]:
        """Every directory a search may look in: ld.so.conf, the system directories, RPATHs met so far."""
        dirs: dict[str, None] = dict.fromkeys(self.conf_dirs)
        for identity, multiarch in self._known_abis():
            dirs.update(dict.fromkeys(system_dirs(identity, multiarch)))
        dirs.update(self._seen_dirs)
        return list(dirs)

    def closure(self, roots: Iterable[str], dlopen: Iterable[str] = ()) -> list[Needed]:
        """The roots and every object they load, once per path, in load order (root by root, breadth first).

        Each root is its own process, as it is at run time. `dlopen` names (sonames or sysroot paths) are
        libraries the programs load at run time (NSS modules, libgcc_s.so.1): they are loaded into every
        root's process after its DT_NEEDED closure, found as a dlopen from libc would find them, and listed
        with needed_by=None and soname set to the name given. Without roots they form one process of their own.
        """
        dlopen = list(dlopen)
        result: dict[str, Needed] = {}
        roots = list(roots)
        for root in roots:
            program = self._load_root(root)
            for needed in self._link_map(program, None, dlopen, program):
                result.setdefault(needed.path, needed)
        if not roots and dlopen:
            first = self._load_dlopen(dlopen[0], None, self._guess_identity())
            for needed in self._link_map(first, dlopen[0], dlopen[1:], None):
                result.setdefault(needed.path, needed)
        return list(result.values())

    def elf_info(self, path: str) -> ElfInfo:
        """The parsed ELF file at a sysroot path (cached); ElfError if it is missing or not ELF."""
        return self._valid_info(path)

    # -- link maps ---------------------------------------------------------------------------------------

    def _load_root(self, root: str) -> _Loaded:
        path = posixpath.normpath("/" + root.lstrip("/"))
        try:
            real = self.sysroot.resolve(path).real
        except SysrootError as exc:
            raise ElfError(f"{root}: no such file in sysroot {self.sysroot.root}") from exc
        info = self._info(real)
        if isinstance(info, ElfError):
            raise ElfError(info.message if path == real else f"{path} (a link to {real}): {info.message}", info.hint)
        # A program's $ORIGIN is the directory of the file the kernel ran (/proc/self/exe: links resolved).
        return self._new_loaded(path, info, posixpath.dirname(real), None)

    def _load_dlopen(self, name: str, program: _Loaded | None, identity: ElfIdentity | None) -> _Loaded:
        """dlopen(name) called from libc: libc has no RPATH, so only the program's RPATH and the defaults."""
        if "/" in name:
            loaded = self._load_root(name)
            loaded.loader = program
            return loaded
        explicit = program.rpath_dirs if program is not None else ()
        key = _SearchKey(name, explicit, True, identity)
        path = self._search(key)
        if path is None:
            raise MissingLibraryError(
                name, program.path if program else "dlopen", self._searched(key), self._passed_by(key)
            )
        return self._new_loaded(path, self._valid_info(path), posixpath.dirname(path), program)

    def _link_map(
        self, first: _Loaded, first_name: str | None, dlopen: list[str], program: _Loaded | None
    ) -> list[Needed]:
        """Load `first` and its needs breadth first, as _dl_map_object_deps does, then the dlopen names."""
        names: dict[str, _Loaded] = {}
        by_real: dict[str, _Loaded] = {}
        needed_list = [Needed(first.path, None, first_name)]
        self._register(first, first_name or first.path, names, by_real)
        queue: deque[_Loaded] = deque([first])

        interp = first.info.interp
        if interp is not None and interp not in names:
            real = self._real(interp)
            if real is None:
                raise MissingLibraryError(interp, first.path, [])
            if real not in by_real:
                rtld = self._new_loaded(interp, self._valid_info(interp), posixpath.dirname(interp), first)
                self._register(rtld, interp, names, by_real)
                needed_list.append(Needed(interp, first.path, interp))
                queue.append(rtld)

        def load_all_needed() -> None:
            while queue:
                loader = queue.popleft()
                for name in loader.info.needed:
                    if name in names:
                        continue
                    path = self._find(name, loader, program)
                    loaded = self._admit(path, name, loader, names, by_real)
                    if loaded is not None:
                        needed_list.append(Needed(path, loader.path, name))
                        queue.append(loaded)

        load_all_needed()
        identity = first.info.identity
        for name in dlopen:
            if name in names:
                continue
            library = self._load_dlopen(name, program, identity)
            if self._admit(library.path, name, None, names, by_real, library) is not None:
                needed_list.append(Needed(library.path, None, name))
                queue.append(library)
                load_all_needed()
        return needed_list

    def _admit(
        self,
        path: str,
        name: str,
        loader: _Loaded | None,
        names: dict[str, _Loaded],
        by_real: dict[str, _Loaded],
        loaded: _Loaded | None = None,
    ) -> _Loaded | None:
        """Add the object at `path` to a link map; None if that file is already in it (glibc compares inodes)."""
        real = self._real(path)
        if real is not None and real in by_real:
            names[name] = by_real[real]
            return None
        if loaded is None:
            loaded = self._new_loaded(path, self._valid_info(path), posixpath.dirname(path), loader)
        self._register(loaded, name, names, by_real)
        return loaded

    def _register(self, loaded: _Loaded, name: str, names: dict[str, _Loaded], by_real: dict[str, _Loaded]) -> None:
        names[name] = loaded
        names.setdefault(loaded.path, loaded)
        if loaded.info.soname:
            names.setdefault(loaded.info.soname, loaded)
        real = self._real(loaded.path)
        if real is not None:
            by_real.setdefault(real, loaded)

    def _new_loaded(self, path: str, info: ElfInfo, origin: str, loader: _Loaded | None) -> _Loaded:
        loaded = _Loaded(path, info, origin, loader)
        loaded.runpath_dirs = self._expand_dirs(info.runpath, loaded)
        # glibc drops DT_RPATH when DT_RUNPATH is present (get-dynamic-info.h).
        loaded.rpath_dirs = () if info.runpath is not None else self._expand_dirs(info.rpath, loaded)
        return loaded

    def _expand_dirs(self, entries: tuple[str, ...] | None, loaded: _Loaded) -> tuple[str, ...]:
        if not entries:
            return ()
        identity = loaded.info.identity
        abi = abi_for(identity)
        lib = self._system_dirs_for(identity)[0].lstrip("/")
        dirs = []
        for entry in entries:
            expanded = expand_dst(entry, loaded.origin, lib, abi.platform if abi else None)
            # An empty or relative entry means the working directory of the process, which a boot image
            # cannot promise; glibc would search it, we leave it out.
            if expanded is None or not expanded.startswith("/"):
                continue
            directory = self._without_dots(expanded)
            dirs.append(directory)
            self._seen_dirs.setdefault(directory, None)
        return tuple(dirs)

    def _without_dots(self, directory: str) -> str:
        """`directory` without "." and ".." components, each ".." taken from the real directory before it.

        glibc keeps "$ORIGIN/../lib" as written and the kernel walks it; a path with ".." is no good as a
        place in an image, and dropping "x/.." by text alone is wrong when x is a link.
        """
        parts = [p for p in directory.split("/") if p]
        if "." not in parts and ".." not in parts:
            return "/" + "/".join(parts)
        current = "/"
        for part in parts:
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(self._real(current) or current)
            else:
                current = posixpath.join(current, part)
        return current

    # -- searching ---------------------------------------------------------------------------------------

    def _find(self, name: str, loader: _Loaded, program: _Loaded | None) -> str:
        if "/" in name:
            lib = self._system_dirs_for(loader.info.identity)[0].lstrip("/")
            abi = abi_for(loader.info.identity)
            expanded = expand_dst(name, loader.origin, lib, abi.platform if abi else None)
            # A relative name would be taken from the working directory; here it is taken from the root.
            written = "/" + (expanded or name).lstrip("/")
            path = posixpath.join(self._without_dots(posixpath.dirname(written)), posixpath.basename(written))
            if expanded is None or self._real(path) is None:
                raise MissingLibraryError(name, loader.path, [])
            return path
        explicit: tuple[str, ...] = ()
        if loader.info.runpath is None:
            chain: list[_Loaded] = []
            node: _Loaded | None = loader
            while node is not None:
                chain.append(node)
                node = node.loader
            # The program's DT_RPATH is searched last even when it is not in the chain (a dlopen'd chain).
            if program is not None and program not in chain:
                chain.append(program)
            for node in chain:
                explicit += node.rpath_dirs
        else:
            explicit = loader.runpath_dirs
        key = _SearchKey(name, explicit, not loader.info.nodeflib, loader.info.identity)
        found = self._search(key)
        if found is None:
            raise MissingLibraryError(name, loader.path, self._searched(key), self._passed_by(key))
        return found

    def _search(self, key: _SearchKey) -> str | None:
        if key in self._searches:
            return self._searches[key]
        found = self._search_uncached(key)
        self._searches[key] = found
        return found

    def _search_uncached(self, key: _SearchKey) -> str | None:
        for directory in key.explicit_dirs:
            path = self._candidate(directory, key.name, key.identity)
            if path is not None:
                return path
        if not key.default_dirs:
            return None
        # ldconfig puts only lib*.so* and ld-*.so* files in the cache, under their DT_SONAME.
        if key.name.startswith(("lib", "ld-")) and ".so" in key.name:
            for directory in self._cache_dirs_for(key.identity):
                path = self._candidate(directory, key.name, key.identity, want_soname=True)
                if path is not None:
                    return path
        for directory in self._system_dirs_for(key.identity):
            path = self._candidate(directory, key.name, key.identity)
            if path is not None:
                return path
        return None

    def _searched(self, key: _SearchKey) -> list[str]:
        dirs = dict.fromkeys(key.explicit_dirs)
        if key.default_dirs:
            dirs.update(dict.fromkeys(self._cache_dirs_for(key.identity)))
            dirs.update(dict.fromkeys(self._system_dirs_for(key.identity)))
        return list(dirs)

    def _passed_by(self, key: _SearchKey) -> list[str]:
        """Why each file of the name in the searched directories was passed by (a FIFO, a broken ELF file)."""
        paths = (posixpath.join(directory, key.name) for directory in self._searched(key))
        return [f"{path}: {self._unusable[path]}" for path in dict.fromkeys(paths) if path in self._unusable]

    def _candidate(
        self, directory: str, name: str, identity: ElfIdentity | None, want_soname: bool = False
    ) -> str | None:
        """directory/name if it is an ELF object the loader would accept for a program of `identity`."""
        if name not in self._listing(directory):
            return None
        path = posixpath.join(directory, name)
        real = self._real(path)
        if real is None:
            return None
        info = self._info(real)
        if isinstance(info, ElfError):
            log.debug("skipping %s: %s", path, info)
            self._unusable[path] = info.message.removeprefix(f"{real}: ")
            return None
        if identity is not None and info.identity != identity:
            log.debug("skipping %s: %s, not %s", path, info.identity.describe(), identity.describe())
            return None
        if want_soname and info.soname is not None and info.soname != name:
            return None
        return path

    def _listing(self, directory: str) -> frozenset[str]:
        names = self._listings.get(directory)
        if names is None:
            self.checkpoint()
            names = frozenset(self.sysroot.listdir(directory))
            self._listings[directory] = names
        return names

    def _cache_dirs_for(self, identity: ElfIdentity | None) -> list[str]:
        if identity is None:
            return self.conf_dirs
        dirs = self._cache_dirs.get(identity)
        if dirs is None:
            # ldconfig drops a directory it has already scanned under another name (same device and inode).
            seen: set[str] = set()
            dirs = []
            for directory in self.conf_dirs + self._system_dirs_for(identity):
                real = self._real(directory)
                if real is not None and real not in seen:
                    seen.add(real)
                    dirs.append(directory)
            self._cache_dirs[identity] = dirs
        return dirs

    def _system_dirs_for(self, identity: ElfIdentity | None) -> list[str]:
        if identity is None:  # any ABI: every default directory the tree has
            every: dict[str, None] = {}
            for known, multiarch in self._known_abis():
                every.update(dict.fromkeys(system_dirs(known, multiarch)))
            return list(every) + [d for d in ("/lib64", "/usr/lib64", "/lib", "/usr/lib") if d not in every]
        dirs = self._system_dirs.get(identity)
        if dirs is None:
            dirs = system_dirs(identity, self._is_multiarch(identity))
            self._system_dirs[identity] = dirs
        return dirs

    def _is_multiarch(self, identity: ElfIdentity) -> bool:
        abi = abi_for(identity)
        if abi is None:
            return False
        return any(self._real(f"{prefix}/{abi.triplet}") is not None for prefix in ("/lib", "/usr/lib"))

    def _known_abis(self) -> list[tuple[ElfIdentity, bool]]:
        """Each ABI in the table whose multiarch directory the sysroot has, plus the ABIs already met."""
        found = {}
        for machine, elf_class, little in ABIS:
            identity = ElfIdentity(elf_class, little, machine)
            if self._is_multiarch(identity):
                found[identity] = True
        for identity in self._system_dirs:
            found.setdefault(identity, self._is_multiarch(identity))
        return list(found.items())

    def _guess_identity(self) -> ElfIdentity | None:
        """Without a root, take the ABI of the sysroot's /bin/sh; None (accept any ELF) if it has none."""
        real = self._real("/bin/sh")
        info = self._info(real) if real is not None else None
        return info.identity if isinstance(info, ElfInfo) else None

    # -- files -------------------------------------------------------------------------------------------

    def _real(self, path: str) -> str | None:
        if path in self._reals:
            return self._reals[path]
        try:
            real: str | None = self.sysroot.resolve(path).real
        except SysrootError:
            real = None
        self._reals[path] = real
        return real

    def _valid_info(self, path: str) -> ElfInfo:
        real = self._real(path)
        if real is None:
            raise ElfError(f"{path}: no such file in sysroot {self.sysroot.root}")
        info = self._info(real)
        if isinstance(info, ElfError):
            raise info
        return info

    def _info(self, real: str) -> ElfInfo | ElfError:
        """Parse a file once; a parse error is cached too, so a bad file on the search path costs one read."""
        cached = self._infos.get(real)
        if cached is not None:
            return cached
        self.checkpoint()
        try:
            # `real` has its links resolved already: a link in its place now is refused, not followed
            fd = open_regular_fd(self.sysroot.host(real), follow=False)
        except OSError as exc:
            result: ElfInfo | ElfError = ElfError(f"{real}: cannot read: {exc.strerror}")
        else:
            try:
                size = os.fstat(fd).st_size
                result = parse_elf(lambda offset, length: os.pread(fd, length, offset), real, size)
            except ElfError as exc:
                result = exc
            except OSError as exc:  # an I/O error while reading
                result = ElfError(f"{real}: cannot read: {exc.strerror}")
            finally:
                os.close(fd)
        self._infos[real] = result
        return result
