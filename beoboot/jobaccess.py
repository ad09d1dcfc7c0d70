"""Who may have which file: a job brings only what its user could read on the master, and the node holds
every path with the master's owner, group and mode.

beoserv runs as root and can read any file to describe it, but the job runs as the user that bpsh's socket
says connected (SO_PEERCRED). Without this check, any user could have a node hold a file they cannot read
here: a 0644 file in someone else's 0700 home, or /etc/shadow, whose hash would then be in a manifest. And
a setuid program that a user owns would be held by root on the node, making it root for whoever asked.

So:
  * every file must be readable by the job's user on the master (owner, group or other bits, as the kernel
    checks them; ACLs are not read), and every directory it brings must be listable; every directory above
    them must be searchable. Otherwise the job is refused, and the error names the path;
  * the manifest carries each file's and directory's owner and group, and every directory above them that a
    node would otherwise make differently (a 0700 home, not root's 0755), so that the node enforces the
    same on later jobs of other users.

Root's jobs skip the check, because root reads everything, but still carry the owners.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from agent import protocol as p
from beoboot.errors import BeobootError

READ, SEARCH = 4, 1
NODE_DIRECTORY = (0o755, 0, 0)  # the mode, owner and group a node gives a directory it makes on the way


class AccessDenied(BeobootError):
    """The job's user may not read a path the job would bring."""


def may(mode: int, owner: int, group: int, uid: int, gids: frozenset[int], want: int) -> bool:
    """Whether `uid` (in groups `gids`) has the `want` bits (READ, SEARCH) of a file with this mode and
    owner: the owner's bits for the owner, the group's for its members, the others' for everyone else."""
    if uid == 0:
        return True
    bits = mode >> 6 if uid == owner else mode >> 3 if group in gids else mode
    return bits & want == want


def guard(files: Iterable[p.JobFile], uid: int, gid: int, groups: Iterable[int], root: str = "/") -> list[p.JobFile]:
    """Check that the user may have every entry of `files`; return the directories above them that a node
    must not make as its default (NODE_DIRECTORY), as entries with their master's mode and owner."""
    gids = frozenset((gid, *groups))
    entries = list(files)
    listed: set[str] = set()
    for entry in entries:
        if entry.link:
            continue
        if not entry.sha256:
            listed.add(entry.path)
        want = READ if entry.sha256 else READ | SEARCH
        if not may(entry.mode, entry.uid, entry.gid, uid, gids, want):
            raise _denied(entry.path, uid, "read" if entry.sha256 else "list")
    above: set[str] = set()
    for directory in {entry.path.rpartition("/")[0] for entry in entries}:  # few distinct ones
        while directory and directory not in above:
            above.add(directory)
            directory = directory.rpartition("/")[0]
    added = []
    prefix = root.rstrip("/")  # "" for the master's own root: paths as they are
    for directory in sorted(above):
        try:
            st = os.lstat(prefix + directory)
        except OSError:
            continue  # a path under a link: the directories of the link's target are entries themselves
        if not stat.S_ISDIR(st.st_mode):
            continue  # a link on the way (/lib -> usr/lib): likewise
        mode = st.st_mode & 0o7777
        if not may(mode, st.st_uid, st.st_gid, uid, gids, SEARCH):
            raise _denied(directory, uid, "search")
        if directory not in listed and (mode, st.st_uid, st.st_gid) != NODE_DIRECTORY:
            added.append(p.JobFile(directory, mode, uid=st.st_uid, gid=st.st_gid))
    return added


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
    return AccessDenied(f"{path}: permission denied: the job's user (uid {uid}) may not {what} it on the master",
                        hint="a job brings only what its user can read on the master")  # fmt: skip
