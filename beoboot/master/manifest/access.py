"""Who may have which file: a job brings only what its user could read on the master, and the node holds
every path with the master's owner, group and mode.
"""

# beoserv runs as root and can read any file to describe it, but the job runs as the user that bpsh's socket
# says connected (SO_PEERCRED). Without this check, any user could have a node hold a file they cannot read
# here: a 0644 file in someone else's 0700 home, or /etc/shadow, whose hash would then be in a manifest. And
# a setuid program that a user owns would be held by root on the node, making it root for whoever asked.
#
# So:
#   * every file must be readable by the job's user on the master, every directory it brings listable, and
#     every directory above them searchable. Otherwise the job is refused, and the error names the path.
#     The kernel itself answers (UserView): for a moment, in the calling thread only, the file-system
#     identity becomes the user's (setfsuid, setfsgid and the raw setgroups system call are per thread in
#     Linux; glibc's setgroups() would change every thread), and access(2) asks with it. So ACLs (a
#     project directory open to a group by setfacl) and security modules count, as they would for the
#     user's own process. Where that cannot be done (beoserv not root, an unknown architecture), the mode
#     bits are read instead (may);
#   * the manifest carries each file's and directory's owner and group, and every directory above them that a
#     node would otherwise make differently (a 0700 home, not root's 0755), so that the node enforces the
#     same on later jobs of other users.
#
# Root's jobs skip the check, because root reads everything, but still carry the owners.

from __future__ import annotations

import ctypes
import os
import platform
import stat
from collections.abc import Iterable

from agent import protocol as p
from beoboot.errors import BeobootError

READ, SEARCH = 4, 1
NODE_DIRECTORY = (0o755, 0, 0)  # the mode, owner and group a node gives a directory it makes on the way
ACL_XATTR = "system.posix_acl_access"
UNHASHED = "unhashed"  # a regular file's entry before its content is hashed: _check() asks READ of it


class AccessDenied(BeobootError):
    """The job's user may not read a path the job would bring."""


def may(mode: int, owner: int, group: int, uid: int, gids: frozenset[int], want: int) -> bool:
    """Whether `uid` (in groups `gids`) has the `want` bits (READ, SEARCH) of a file with this mode and
    owner: the owner's bits for the owner, the group's for its members, the others' for everyone else."""
    if uid == 0:
        return True
    bits = mode >> 6 if uid == owner else mode >> 3 if group in gids else mode
    return bits & want == want


# Linux system call numbers of the per-thread credential calls (glibc's wrappers broadcast setgroups)
CREDENTIAL_CALLS = {
    "x86_64": {"setgroups": 116, "setfsuid": 122, "setfsgid": 123},
    "aarch64": {"setgroups": 159, "setfsuid": 151, "setfsgid": 152},
}
_libc = ctypes.CDLL(None, use_errno=True)


class UserView:
    """`with UserView(uid, gid, groups) as view:` view.may(path, READ) is the kernel's answer for that user,
    when view.active (else there is no per-thread identity here: read the mode bits instead). Only the
    calling thread changes, and only inside the block; nothing in it may wait for another task, and a
    thread started inside it would be born with the user's identity."""

    def __init__(self, uid: int, gid: int, groups: Iterable[int]) -> None:
        self.uid, self.gid, self.groups = uid, gid, tuple(groups)
        self._calls = CREDENTIAL_CALLS.get(platform.machine())
        self._saved: tuple[int, int, list[int]] | None = None

    def __enter__(self) -> UserView:
        if self._calls is None or os.geteuid() != 0:
            return self
        saved = (os.geteuid(), os.getegid(), os.getgroups())  # the file-system identity follows the effective one
        groups = (ctypes.c_uint * max(1, len(self.groups)))(*self.groups)
        if _libc.syscall(self._calls["setgroups"], len(self.groups), groups) != 0:
            return self
        self._saved = saved
        # fsgid before fsuid: once fsuid is not root, the file-system capabilities are gone from this thread
        _libc.syscall(self._calls["setfsgid"], self.gid)
        _libc.syscall(self._calls["setfsuid"], self.uid)
        if _libc.syscall(self._calls["setfsuid"], self.uid) != self.uid:  # it returns the fsuid it found
            self.__exit__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None or self._calls is None:
            return
        uid, gid, groups = self._saved
        self._saved = None
        _libc.syscall(self._calls["setfsuid"], uid)
        _libc.syscall(self._calls["setfsgid"], gid)
        saved_groups = (ctypes.c_uint * max(1, len(groups)))(*groups)
        _libc.syscall(self._calls["setgroups"], len(groups), saved_groups)

    @property
    def active(self) -> bool:
        return self._saved is not None

    def may(self, path: str, want: int) -> bool:
        """access(path, want) with AT_EACCESS: with this thread's file-system identity, the user's."""
        return os.access(path, want, effective_ids=True)


def guard(files: Iterable[p.JobFile], uid: int, gid: int, groups: Iterable[int], root: str = "/") -> list[p.JobFile]:
    """Check that the user may have every entry of `files`; return the directories above them that a node
    must not make as its default (NODE_DIRECTORY), as entries with their master's mode and owner."""
    gids = frozenset((gid, *groups))
    entries = list(files)
    listed = {entry.path for entry in entries if not entry.sha256 and not entry.link}
    prefix = root.rstrip("/")  # "" for the master's own root: paths as they are
    if uid != 0:
        _check(entries, uid, gid, gids, prefix)
    above: set[str] = set()
    for directory in {entry.path.rpartition("/")[0] for entry in entries}:  # few distinct ones
        while directory and directory not in above:
            above.add(directory)
            directory = directory.rpartition("/")[0]
    added = []
    for directory in sorted(above):
        try:
            st = os.lstat(prefix + directory)
        except OSError:
            continue  # a path under a link: the directories of the link's target are entries themselves
        if not stat.S_ISDIR(st.st_mode):
            continue  # a link on the way (/lib -> usr/lib): likewise
        mode = st.st_mode & 0o7777
        if directory in listed:
            continue
        # an ACL counts even on a root:0755 directory: `setfacl -m u:guest:- /srv/data` closes it to one user
        acl = acl_of(prefix + directory)
        if (mode, st.st_uid, st.st_gid) != NODE_DIRECTORY or acl:
            added.append(p.JobFile(directory, mode, uid=st.st_uid, gid=st.st_gid, acl=acl))
    return added


def guard_contents(paths: Iterable[str], uid: int, gid: int, groups: Iterable[int], root: str = "/") -> None:
    """AccessDenied, as guard() words it, for the first of these regular files (real paths, links resolved)
    that the user may not read. Asked before any of them is hashed: the ObjectStore serves a file to anyone
    by its hash, so hashing first would let a refused job learn whether a secret equals a guess."""
    if uid == 0:
        return
    prefix = root.rstrip("/")
    entries = []
    for path in paths:
        try:
            st = os.stat(prefix + path)
        except OSError:
            continue  # gone: describing it fails on its own
        entries.append(p.JobFile(path, st.st_mode & 0o7777, UNHASHED, uid=st.st_uid, gid=st.st_gid))
    _check(entries, uid, gid, frozenset((gid, *groups)), prefix)


def acl_of(path: str) -> str:
    """The POSIX ACL of `path` (system.posix_acl_access, in hex), "" when it has none beyond its mode."""
    try:
        return os.getxattr(path, ACL_XATTR, follow_symlinks=False).hex()
    except OSError:
        return ""


def _check(entries: list[p.JobFile], uid: int, gid: int, gids: frozenset[int], prefix: str) -> None:
    """AccessDenied for the first entry the user may not read (a file) or list (a directory), naming the
    directory above it that stops them, if it is one."""
    refused: list[tuple[p.JobFile, str | None]] = []  # with the directory above that stops the user, if one does
    with UserView(uid, gid, gids - {gid}) as view:

        def searchable(directory: str) -> bool:
            if view.active:
                return view.may(prefix + directory, SEARCH)
            return may_reach(directory, uid, gids, prefix or "/")

        for entry in entries:
            if entry.link:
                continue  # the link's target is an entry of its own
            want = READ if entry.sha256 else READ | SEARCH
            if view.active:
                allowed = view.may(prefix + entry.path, want)
            else:
                allowed = may(entry.mode, entry.uid, entry.gid, uid, gids, want) and may_reach(
                    entry.path, uid, gids, prefix or "/"
                )
            if not allowed:
                refused.append((entry, next((d for d in _directories_above(entry.path) if not searchable(d)), None)))
    for entry, blocked in refused:  # as root again: what the user cannot see may still exist
        if not os.path.lexists(prefix + entry.path):
            # a path the master does not have holds content made from others' (the Python stdlib zip,
            # built from the stdlib's files): nothing there to keep from anyone
            continue
        raise (
            _denied(blocked, uid, "search") if blocked else _denied(entry.path, uid, "read" if entry.sha256 else "list")
        )


def _directories_above(path: str) -> list[str]:
    """'/a/b/c' -> ['/a', '/a/b']"""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: n + 1]) for n in range(len(parts))]


def readable(paths: Iterable[str], uid: int, gid: int, groups: Iterable[int], root: str = "/") -> list[str]:
    """Those of `paths` the user may open: read a file, list a directory, search every directory above."""
    paths = list(paths)
    if uid == 0:
        return paths
    prefix, gids = root.rstrip("/"), frozenset((gid, *groups))
    with UserView(uid, gid, tuple(groups)) as view:
        if not view.active:
            return [path for path in paths if may_reach(path, uid, gids, root)]
        return [
            path for path in paths if view.may(prefix + path, READ | SEARCH if os.path.isdir(prefix + path) else READ)
        ]


def may_reach(path: str, uid: int, gids: frozenset[int], root: str = "/") -> bool:
    """Whether the user may read `path` (a file; a directory: list it) and search every directory above
    it: what the user's own process could open on the master. Links are followed, as open() would."""
    if uid == 0:
        return True
    prefix = root.rstrip("/")
    directory = path.rpartition("/")[0]
    try:
        while directory:
            st = os.stat(prefix + directory)
            if not may(st.st_mode, st.st_uid, st.st_gid, uid, gids, SEARCH):
                return False
            directory = directory.rpartition("/")[0]
        st = os.stat(prefix + path)
    except OSError:
        return False
    want = READ | SEARCH if stat.S_ISDIR(st.st_mode) else READ
    return may(st.st_mode, st.st_uid, st.st_gid, uid, gids, want)


def _denied(path: str, uid: int, what: str) -> AccessDenied:
    return AccessDenied(
        f"{path}: permission denied: the job's user (uid {uid}) may not {what} it on the master",
        hint="a job brings only what its user can read on the master",
    )
