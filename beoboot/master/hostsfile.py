"""The master's own name for every node: a block of the cluster's host table kept in a hosts file.

Nodes resolve each other from the table beoserv serves (/api/v1/hosts); the master's resolver knows
nothing of it, so `ssh n3` or `ping .3` on the master would fail. With `hosts_file = "/etc/hosts"` in
beoserv.toml, beoserv keeps the table in that file, between two marker lines, and rewrites the block when
the table changes (a node registers, a lease moves a node, the address plan is reloaded). Everything
outside the block is the administrator's and is kept byte for byte. Any other path makes a file for
dnsmasq's `addn-hosts`. Scyld did this with BeoNSS, an NSS module; a file needs no code in every program.
"""

from __future__ import annotations

import os
import stat
import tempfile

BEGIN = "# beoboot nodes: begin (beoserv rewrites this block when nodes change; edit outside it)"
END = "# beoboot nodes: end"


class HostsFileError(Exception):
    pass


def with_block(existing: str, table: str) -> str:
    """`existing` with its block replaced by `table` (in place), or the block appended when there is none."""
    block = f"{BEGIN}\n{table}{END}\n"
    lines = existing.splitlines(keepends=True)
    marks = [line.rstrip("\n") for line in lines]
    if BEGIN not in marks:
        if END in marks:
            raise HostsFileError(f"has the line {END!r} without {BEGIN!r} before it")
        separator = "" if not existing or existing.endswith("\n") else "\n"
        return existing + separator + block
    begin = marks.index(BEGIN)
    try:
        end = marks.index(END, begin + 1)
    except ValueError:
        raise HostsFileError(f"has the line {BEGIN!r} but no {END!r} after it") from None
    return "".join(lines[:begin]) + block + "".join(lines[end + 1 :])


def update(path: str, table: str) -> bool:
    """Put `table` in the block of the hosts file at `path` (made if missing). True when the file changed.
    Written to a temporary name in the same directory, with the old file's mode and owner, then renamed:
    a program resolving a name meanwhile reads the old file or the new one, never half of one."""
    try:
        with open(path, encoding="utf-8") as f:
            existing = f.read()
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        existing, st = "", None
    except (OSError, UnicodeDecodeError) as exc:
        raise HostsFileError(f"cannot read it: {exc}") from None
    text = with_block(existing, table)
    if text == existing:
        return False
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, stat.S_IMODE(st.st_mode) if st else 0o644)
        if st and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            os.chown(temporary, st.st_uid, st.st_gid)
        os.rename(temporary, path)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise HostsFileError(f"cannot write it: {exc}") from None
    return True
