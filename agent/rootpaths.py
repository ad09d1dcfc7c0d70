"""Paths of the environment root as its jobs see them, for the agent, which works on it from outside, as root.

A job may leave a symbolic link wherever it may write (`ln -s / ~/data`). Followed from outside the chroot,
as plain path calls follow it, such a link would have the agent write, chown or unlink the supervisor's own
files (`~/data/etc`, a directory of the next job's manifest, would chown the real /etc), or replace a
verified object in the libcache through `~/x -> /.libcache/objects`. Followed inside the root, as the jobs
follow it, it would still hand the user whatever it points at: `~/data/etc` made the user's would be the
environment root's /etc. And a path checked first and used after can be swapped for a link in between.

So a path is walked one component at a time from a descriptor of the root, each opened without following
it (O_PATH | O_NOFOLLOW), holding a descriptor of every directory reached: a link swapped in later changes
nothing. Links are followed inside the root (an absolute one from the root, `..` never above it), and only
links root made: those of the images and of manifests (the agent makes them); a link a user's job made is
refused, as is a path that ends in the libcache. Missing directories are made on the way (root's 0755),
through a link too, as `mkdir -p` would. The last step is done through the directory's descriptor
(linkat, renameat, fstatat, unlinkat, ...).
"""

from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
STEP_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class RootPathError(Exception):
    """A job path that cannot be used: it passes through a user's link, leads into the libcache, or names a
    file where a directory must be."""


class RootDirectories:
    """`with RootDirectories(root, forbidden) as dirs:` dirs.parent("usr/lib/x") is (fd, "x"): a descriptor
    of the directory holding x, found as the module docstring says, kept open for the block so the files
    of one directory cost one walk. `forbidden` (".libcache", relative to the root) is refused."""

    def __init__(self, root: str, forbidden: str) -> None:
        self.root = root
        self.forbidden = forbidden
        self._found: dict[str, tuple[int, str]] = {}  # path as asked -> (descriptor, path with links resolved)
        self._opened: list[int] = []

    def __enter__(self) -> RootDirectories:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._opened.append(fd)
        self._found[""] = (fd, "")
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._opened:
            os.close(fd)
        self._opened.clear()
        self._found.clear()

    def parent(self, relative: str, *, create: bool = True) -> tuple[int, str]:
        """The directory holding `relative` (no leading /), and its last component. OSError
        (FileNotFoundError when not `create`), RootPathError."""
        directory, _, name = relative.rpartition("/")
        return self.directory(directory, create=create), name

    def directory(self, relative: str, *, create: bool = True) -> int:
        return self._find(relative, create, 0)[0]

    def _find(self, relative: str, create: bool, links: int) -> tuple[int, str]:
        found = self._found.get(relative)
        if found is not None:
            return found
        above, _, name = relative.rpartition("/")
        parent_fd, parent_real = self._find(above, create, links)
        if name in ("", "."):
            found = (parent_fd, parent_real)
        elif name == "..":  # the parent of where the path really is, never above the root
            found = self._find(parent_real.rpartition("/")[0], create, links)
        else:
            found = self._step(parent_fd, parent_real, name, create, links)
        if found[1] == self.forbidden or found[1].startswith(self.forbidden + "/"):
            raise RootPathError(f"/{relative} leads into the libcache: a job path may not")
        self._found[relative] = found
        return found

    def _step(self, parent_fd: int, parent_real: str, name: str, create: bool, links: int) -> tuple[int, str]:
        real = f"{parent_real}/{name}".lstrip("/")
        try:
            fd = os.open(name, STEP_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
            except FileExistsError:
                pass  # made meanwhile
            fd = os.open(name, STEP_FLAGS, dir_fd=parent_fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._opened.append(fd)
            return fd, real
        try:
            if not stat.S_ISLNK(st.st_mode):
                raise RootPathError(f"/{real} is not a directory")
            if st.st_uid != 0:
                raise RootPathError(f"/{real} is a link that uid {st.st_uid} made: a job path may not pass through it")
            target = os.readlink("", dir_fd=fd)  # the link opened, not whatever has that name by now
        finally:
            os.close(fd)
        if links >= MAX_LINKS:
            raise OSError(errno.ELOOP, f"too many levels of links at /{real}")
        through = target.lstrip("/") if target.startswith("/") else f"{parent_real}/{target}".lstrip("/")
        return self._find(through, create, links + 1)


def unlink_at(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def stat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """lstat of `name` in the directory, None when there is nothing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def is_not_a_directory(exc: OSError) -> bool:
    """open(O_DIRECTORY | O_NOFOLLOW) of a link or a file says so with one of these."""
    return exc.errno in (errno.ELOOP, errno.ENOTDIR)
