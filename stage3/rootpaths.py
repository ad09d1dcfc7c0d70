"""Paths of the environment root as its jobs see them, for the agent, which works on it from outside, as root."""

# A job may leave a symbolic link wherever it may write (`ln -s / ~/data`), and so may a user on the master,
# whose links a manifest brings. Followed from outside the chroot, as plain path calls follow it, such a link
# would have the agent write, chown or unlink the supervisor's own files (`~/data/etc`, a directory of the
# next job's manifest, would chown the real /etc), or replace a verified object in the libcache through
# `~/x -> /.libcache/objects`. Followed inside the root, as the jobs follow it, it would still hand the user
# whatever it points at: a user's `~/evil -> /etc`, brought by one job and left on the node, would put the
# user's next `~/evil/ld.so.preload` into the environment root's /etc, and every later job, root's too, would
# load the user's library. And a path checked first and used after can be swapped for a link in between.
#
# So a path is walked one component at a time from a descriptor of the root, each opened without following
# it (O_PATH | O_NOFOLLOW), holding a descriptor of every directory reached: a link swapped in later changes
# nothing. Links are followed inside the root (an absolute one from the root, `..` never above it), and only
# links that are root's choice, which is when all of these hold:
#   * the link is root's on the node. A manifest makes each link with its owner on the master (a user's link
#     there is the user's here), and a job can only make links of its own user (a root job's are root's
#     choice, as root's on the master are);
#   * it has one name (st_nlink 1). A hard link to a symbolic link is a link of its owner's in a place
#     someone else chose, with a relative target read from there, and fs.protected_hardlinks, which forbids
#     it to other users, is off unless a distribution turns it on;
#   * the directory holding it is root's and no one else may write in it, and so is every directory above
#     up to the environment root, or it is root's and sticky (/tmp): elsewhere a user could rename root's
#     link away and put another in its place. A sticky one may be on the way, since only root may rename
#     root's directories there (and no user may move one of root's in: that needs write permission on the
#     directory itself), but may not hold the link: anyone may rename a link in, root's too (one a
#     manifest made in the user's home). The group and other write bits say it all, ACLs
#     included: with an ACL, the group bits are its mask, which bounds every named user and group. The node
#     holds each directory with the master's owner and mode, so a link in a directory users may write on
#     the master (a 0777 one, a user's home) is in one here too, whoever owns it.
# Any other link on the way is refused. Missing directories are made on the way (root's 0755), through a
# link too, as `mkdir -p` would. The last step is done through the directory's descriptor (linkat, renameat,
# fstatat, unlinkat, ...), so the last component is never followed.
#
# Some paths are the node's own and never a job's, however reached (AgentPathError): the libcache, and the
# files the agent keeps in the environment root's /etc (`own_files`).

from __future__ import annotations

import errno
import os
import stat
import threading
from typing import NamedTuple

MAX_LINKS = 40  # as the kernel's own limit on links followed in one lookup
STEP_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class RootPathError(Exception):
    """A job path that cannot be used: it passes through a link that is not root's choice, or names a file
    where a directory must be."""


class AgentPathError(RootPathError):
    """A job path that is, or leads to, one of the node's own: the libcache or a file the agent keeps."""


class _Found(NamedTuple):
    fd: int  # a descriptor of the directory
    real: str  # its path, links resolved, relative to the root ("" for the root)
    roots: bool  # links in it are root's choice: it is root's, closed to others, and `above` holds
    above: bool  # it and every directory above it are root's alone, closed or sticky (module docstring)


def closed(st: os.stat_result) -> bool:
    """A directory only root may add names to or take them from: root's, and no group or other write bit
    (which is an ACL's mask when it has one)."""
    return st.st_uid == 0 and not st.st_mode & 0o022


def roots_alone(st: os.stat_result) -> bool:
    """closed(), or root's and sticky: only root may rename or unlink root's entries there."""
    return closed(st) or (st.st_uid == 0 and bool(st.st_mode & stat.S_ISVTX))


def roots_choice(link: os.stat_result, parent_roots: bool) -> bool:
    """Whether a link found (lstat) in a directory root's alone as far as `parent_roots` says is root's choice."""
    return parent_roots and link.st_uid == 0 and link.st_nlink == 1


class RootDirectories:
    """`with RootDirectories(root, forbidden, own_files) as dirs:` dirs.parent("usr/lib/x") is (fd, "x"): a
    descriptor of the directory holding x, found as the module docstring says, kept open for the block so
    the files of one directory cost one walk. `forbidden` (".libcache", relative to the root) and everything
    under it, and the paths of `own_files` ("etc/passwd"), are refused, however reached."""

    def __init__(self, root: str, forbidden: str, own_files: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.forbidden = forbidden
        self.own_files = own_files
        self._found: dict[str, _Found] = {}  # path as asked -> where it really is
        self._opened: list[int] = []

    def __enter__(self) -> RootDirectories:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._opened.append(fd)
        self._found[""] = _Found(fd, "", True, True)  # the agent's own: made by it, as root
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._opened:
            os.close(fd)
        self._opened.clear()
        self._found.clear()

    def parent(self, relative: str, *, create: bool = True) -> tuple[int, str]:
        """The directory holding `relative` (no leading /), and its last component. OSError
        (FileNotFoundError when not `create`), RootPathError (AgentPathError: it is the node's own)."""
        directory, _, name = relative.rpartition("/")
        found = self._find(directory, create, 0)
        self._refuse_own(relative, f"{found.real}/{name}".lstrip("/"))
        return found.fd, name

    def directory(self, relative: str, *, create: bool = True) -> int:
        return self._find(relative, create, 0).fd

    def check(self, relative: str) -> None:
        """AgentPathError if `relative` leads, as the root is now, to one of the node's own paths; nothing
        is made. A path that is not there yet, or passes through a link that is not root's choice, is not
        refused here: placing it makes it, or fails, then."""
        try:
            self.parent(relative, create=False)
        except AgentPathError:
            raise
        except (OSError, RootPathError):
            pass

    def trusts(self, relative: str) -> bool:
        """Whether `relative` is a link a path would be walked through: root's choice (module docstring)."""
        directory, _, name = relative.rpartition("/")
        try:
            found = self._find(directory, False, 0)
            st = os.stat(name, dir_fd=found.fd, follow_symlinks=False)
        except (OSError, RootPathError):
            return False
        return stat.S_ISLNK(st.st_mode) and roots_choice(st, found.roots)

    def roots_alone(self, relative: str) -> bool:
        """Whether only root can change which file `relative` names: the directory holding it, and every one
        above, is root's alone (module docstring), as walked already for this path."""
        directory = relative.rpartition("/")[0]
        found = self._found.get(directory)
        return found is not None and found.above

    def forget(self) -> None:
        """Directories found so far are walked again when next asked: one's owner or mode has changed, and
        with it which links below it are root's choice. (Their descriptors stay open until the block ends.)"""
        root = self._found[""]
        self._found.clear()
        self._found[""] = root

    def _refuse_own(self, relative: str, real: str) -> None:
        if real == self.forbidden or real.startswith(self.forbidden + "/"):
            raise AgentPathError(f"/{relative} leads into the libcache: a job path may not")
        if real in self.own_files:
            where = f"/{real}" if real == relative else f"/{relative} leads to /{real}, which"
            raise AgentPathError(f"{where} is the node's own: its agent keeps it, and no job may bring it")

    def _find(self, relative: str, create: bool, links: int) -> _Found:
        found = self._found.get(relative)
        if found is not None:
            return found
        above, _, name = relative.rpartition("/")
        parent = self._find(above, create, links)
        if name in ("", "."):
            found = parent
        elif name == "..":  # the parent of where the path really is, never above the root
            found = self._find(parent.real.rpartition("/")[0], create, links)
        else:
            found = self._step(parent, name, create, links)
        self._refuse_own(relative, found.real)
        self._found[relative] = found
        return found

    def _step(self, parent: _Found, name: str, create: bool, links: int) -> _Found:
        real = f"{parent.real}/{name}".lstrip("/")
        try:
            fd = os.open(name, STEP_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o755, dir_fd=parent.fd)
            except FileExistsError:
                pass  # made meanwhile
            fd = os.open(name, STEP_FLAGS, dir_fd=parent.fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self._opened.append(fd)
            return _Found(fd, real, parent.above and closed(st), parent.above and roots_alone(st))
        try:
            if not stat.S_ISLNK(st.st_mode):
                raise RootPathError(f"/{real} is not a directory")
            if st.st_uid != 0:
                raise RootPathError(f"/{real} is a link that uid {st.st_uid} made: a job path may not pass through it")
            if not parent.roots:
                raise RootPathError(
                    f"/{real} is a link in a directory others than root may write (/{parent.real}, "
                    "or one above it): a job path may not pass through it"
                )
            if st.st_nlink != 1:
                raise RootPathError(f"/{real} is a link with {st.st_nlink} names: a job path may not pass through it")
            target = os.readlink("", dir_fd=fd)  # the link opened, not whatever has that name by now
        finally:
            os.close(fd)
        if links >= MAX_LINKS:
            raise OSError(errno.ELOOP, f"too many levels of links at /{real}")
        through = target.lstrip("/") if target.startswith("/") else f"{parent.real}/{target}".lstrip("/")
        return self._find(through, create, links + 1)


def replace_file(path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` whole by a temporary name and rename, so a reader sees the old file or the new one; the
    temporary is made afresh (O_EXCL, O_NOFOLLOW): a link left at its name is never written through."""
    tmp = f"{path}.beoboot-{threading.get_ident()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with open(fd, "w", closefd=False) as f:
            f.write(text)
        os.fchmod(fd, mode)  # not the umask's
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


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
