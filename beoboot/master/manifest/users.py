"""Who the job runs as, by name: the passwd and group entries a job's user needs on the node (BeoNSS).

A node's environment root knows only root and nobody, so a job of uid 1000 ran nameless: `whoami` failed,
`ls -l` showed numbers, and programs that look up their user (git, ssh) refused to start. As Scyld's BeoNSS did,
the node is told only about the user it runs a job for: the master's full passwd entry for that uid, or,
when the master has none (a user from a directory service the master cannot list), one computed from the
job's USER, HOME and SHELL. Each group the job runs with comes as a group entry with that user as member.
No password or hash ever leaves the master: the password field is "x", as in /etc/passwd itself.
"""

from __future__ import annotations

import grp
import pwd
import threading
import time

from beoboot.master.objects import StatKey, key_of

ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
KEEP_SECONDS = 60.0  # a user from a directory service (LDAP) changes without /etc/passwd changing


def _clean(field: str) -> str:
    """Entry fields are colon-separated lines: neither may appear in a field."""
    return field.replace(":", "_").replace("\n", " ")


def passwd_entry(uid: int, gid: int, env: dict[str, str]) -> str:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        name = env.get("USER") or env.get("LOGNAME") or f"uid{uid}"
        fields = [name, "x", str(uid), str(gid), name, env.get("HOME", "/"), env.get("SHELL", "/bin/sh")]
    else:
        fields = [user.pw_name, "x", str(uid), str(user.pw_gid), user.pw_gecos, user.pw_dir, user.pw_shell]
    return ":".join(map(_clean, fields))


def group_entries(gids: tuple[int, ...], user: str) -> tuple[str, ...]:
    """One entry per group the master can name, with `user` as its member; a gid it cannot name stays a
    number on the node too."""
    entries = []
    for gid in dict.fromkeys(gids):
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
        entries.append(":".join(map(_clean, [name, "x", str(gid), user])))
    return tuple(entries)


class JobUsers:
    """passwd_entry and group_entries per job, from cache while /etc/passwd and /etc/group are unchanged
    and for at most KEEP_SECONDS: beoserv asks on its event loop, and with a directory service (LDAP,
    sssd) each lookup may go over the network."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple, tuple[str, tuple[str, ...], float, tuple[StatKey | None, ...]]] = {}

    def entries(self, uid: int, gid: int, groups: tuple[int, ...], env: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        key = (uid, gid, groups, env.get("USER"), env.get("LOGNAME"), env.get("HOME"), env.get("SHELL"))
        files = tuple(map(key_of, ACCOUNT_FILES))
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[3] == files and now - cached[2] < KEEP_SECONDS:
            return cached[0], cached[1]
        user = passwd_entry(uid, gid, env)
        found = group_entries((gid, *groups), user.split(":", 1)[0])
        with self._lock:
            if len(self._cache) > 1024:
                self._cache.clear()
            self._cache[key] = (user, found, now, files)
        return user, found
