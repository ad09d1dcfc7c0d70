"""Paths inside a sysroot: a directory tree that stands for a machine's `/` (the master's own, or a debootstrap tree).

Every path handed around in beoboot is *sysroot-absolute* ("/usr/lib/x86_64-linux-gnu/libz.so.1").
Symbolic links are followed inside the sysroot: an absolute link target is taken relative to the sysroot,
never to the build host, so another tree can be inspected without being executed or chrooted into.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from beoboot.errors import SysrootError

MAX_SYMLINKS = 40  # the kernel's limit (MAXSYMLINKS), so a loop fails the way it would at run time


@dataclass(frozen=True)
class Resolved:
    """Where a sysroot path really lives, and every symbolic link passed on the way there."""

    path: str  # the sysroot-absolute path that was asked for, normalised
    real: str  # the sysroot-absolute path of the final non-link file
    links: tuple[tuple[str, str], ...] = field(default=())  # (link path, link target as stored)


# Said by every command that reads a sysroot: `build` takes it from its config, the others from --sysroot.
SYSROOT_HINT = (
    "name an existing tree: sysroot in [build] of the config (-c FILE), or --sysroot DIR for deps, modules, nics"
)


class Sysroot:
    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SysrootError(f"sysroot {root} is not a directory", hint=SYSROOT_HINT)
        self._real_dirs: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {"/": ("/", ())}

    def __repr__(self) -> str:
        return f"Sysroot({str(self.root)!r})"

    def host(self, path: str) -> Path:
        """The build-host path of a sysroot path, without following links."""
        norm = posixpath.normpath("/" + path.lstrip("/"))
        if str(self.root) == "/":
            return Path(norm)
        return Path(str(self.root) + norm)

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(self.host(path))

    def resolve(self, path: str) -> Resolved:
        """Follow links component by component; raise SysrootError if missing or looping."""
        norm = posixpath.normpath("/" + path.lstrip("/"))
        parent, name = posixpath.split(norm)
        real_parent, links = self._resolve_dir(parent, 0)
        real, more = self._follow(posixpath.join(real_parent, name), 0, norm)
        return Resolved(norm, real, links + more)

    def exists(self, path: str) -> bool:
        try:
            self.resolve(path)
        except SysrootError:
            return False
        return True

    def is_file(self, path: str) -> bool:
        try:
            real = self.resolve(path).real
        except SysrootError:
            return False
        return stat.S_ISREG(os.lstat(self.host(real)).st_mode)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.host(self.resolve(path).real)))
        except (OSError, SysrootError):
            return []

    # -- internals --------------------------------------------------------------------------------

    def _resolve_dir(self, directory: str, depth: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        cached = self._real_dirs.get(directory)
        if cached is not None:
            return cached
        parent, name = posixpath.split(directory)
        real_parent, links = self._resolve_dir(parent, depth)
        real, more = self._follow(posixpath.join(real_parent, name), depth, directory)
        result = (real, links + more)
        self._real_dirs[directory] = result
        return result

    def _follow(self, candidate: str, depth: int, asked: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Follow `candidate` (whose parent is already real) until it is not a link."""
        links: list[tuple[str, str]] = []
        while True:
            try:
                st = os.lstat(self.host(candidate))
            except OSError as exc:
                raise SysrootError(f"{asked}: {exc.strerror} in sysroot {self.root}") from None
            if not stat.S_ISLNK(st.st_mode):
                return candidate, tuple(links)
            depth += 1
            if depth > MAX_SYMLINKS:
                raise SysrootError(f"{asked}: too many levels of symbolic links in sysroot {self.root}")
            target = os.readlink(self.host(candidate))
            links.append((candidate, target))
            base = "/" if target.startswith("/") else posixpath.dirname(candidate)
            joined = posixpath.normpath(posixpath.join(base, target))
            parent, name = posixpath.split(joined)
            real_parent, more = self._resolve_dir(parent, depth)
            links.extend(more)
            candidate = posixpath.join(real_parent, name)
