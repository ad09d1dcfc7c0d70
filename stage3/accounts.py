"""The environment root's /etc/passwd and /etc/group: the users whose jobs ran on this node (BeoNSS).

The envroot image names root and nobody. Each job's manifest carries its user's passwd entry and an
entry per group it runs with (beoboot.master.manifest.users); before the job starts, an entry not yet in the file
replaces any line with the same name or number, and the file is written to a temporary name and renamed,
so a job reading it meanwhile sees the old or the new file, never half of one. Entries stay while the node
runs: the next job of that user needs no write.
"""

from __future__ import annotations

import os
import threading

from stage3.rootpaths import replace_file

PASSWD_FIELDS, GROUP_FIELDS = 7, 4
ACCOUNT_FILES = {PASSWD_FIELDS: "etc/passwd", GROUP_FIELDS: "etc/group"}  # in the environment root


class AccountError(ValueError):
    """An entry that is not one line of the file's shape."""


def check_entry(entry: str, fields: int) -> list[str]:
    parts = entry.split(":")
    if len(parts) != fields or "\n" in entry or not parts[0] or not parts[2].isdigit():
        raise AccountError(f"not an account entry of {fields} fields: {entry[:80]!r}")
    return parts


class Accounts:
    def __init__(self, env_root: str) -> None:
        self.paths = {fields: os.path.join(env_root, name) for fields, name in ACCOUNT_FILES.items()}
        self._known: set[str] = set()  # entries written (or found) already
        self._lock = threading.Lock()

    def ensure(self, passwd_entry: str, group_entries: tuple[str, ...]) -> None:
        """Make these entries the environment root's; AccountError for a malformed one (nothing written)."""
        wanted = {PASSWD_FIELDS: [passwd_entry] if passwd_entry else [], GROUP_FIELDS: list(group_entries)}
        if self._known.issuperset(wanted[PASSWD_FIELDS] + wanted[GROUP_FIELDS]):
            return
        for fields, entries in wanted.items():
            for entry in entries:
                check_entry(entry, fields)
        with self._lock:
            for fields, entries in wanted.items():
                if entries and not self._known.issuperset(entries):
                    self._merge(self.paths[fields], fields, entries)
                    self._known.update(entries)

    def _merge(self, path: str, fields: int, entries: list[str]) -> None:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if set(entries) <= set(lines):
            return
        if fields == GROUP_FIELDS:
            entries = [_with_members_of(entry, lines) for entry in entries]
        names = {entry.split(":")[0] for entry in entries}
        numbers = {entry.split(":")[2] for entry in entries}
        kept = [line for line in lines if not _same_account(line, fields, names, numbers)]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_file(path, "".join(line + "\n" for line in kept + entries))


def _same_account(line: str, fields: int, names: set[str], numbers: set[str]) -> bool:
    parts = line.split(":")
    return len(parts) == fields and (parts[0] in names or parts[2] in numbers)


def _with_members_of(entry: str, lines: list[str]) -> str:
    """A group entry with the members the file already lists for that same group added: two users'
    jobs in one group both stay its members."""
    name, password, number, members = entry.split(":")
    listed = [m for m in members.split(",") if m]
    for line in lines:
        parts = line.split(":")
        if len(parts) == GROUP_FIELDS and parts[0] == name and parts[2] == number:
            listed = list(dict.fromkeys([m for m in parts[3].split(",") if m] + listed))
    return ":".join([name, password, number, ",".join(listed)])
