"""The kernel file systems PID 1 mounts itself: /proc, /sys, /dev.

No initramfs init from the kernel mounts these for us (devtmpfs automount applies only to a root
mounted from a disk), and the agent needs them for modules, NICs and the console.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.system import syscalls


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    flags: int
    data: str = ""


PSEUDO_FILESYSTEMS = (
    # /proc first: whether the others are mounted is read from /proc/self/mounts.
    Mount("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC),
    Mount("sysfs", "/sys", "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC),
    Mount("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
)

# The environment root's, in order (targets under the root), as a Linux install has them: jobs need
# /dev/shm for POSIX shared memory and semaphores (MPI's shared-memory transport, Python's
# multiprocessing) and /dev/pts for pseudo-terminals; opening /dev/ptmx finds the devpts mounted at pts
# beside it (Linux 4.7 and later).
ENV_ROOT_MOUNTS = (
    Mount("devtmpfs", "/dev", "devtmpfs", 0),
    Mount("tmpfs", "/dev/shm", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
    Mount("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC, "mode=0620,ptmxmode=0666"),
    Mount("proc", "/proc", "proc", 0),
    Mount("sysfs", "/sys", "sysfs", 0),
    Mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777"),
)


def parse_mount_targets(text: str) -> frozenset[str]:
    """Mount points listed in /proc/self/mounts (fstab format; octal escapes such as \\040 for spaces)."""
    targets = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            targets.add(_unescape(fields[1]))
    return frozenset(targets)


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_targets(mounts_file: str = "/proc/self/mounts") -> frozenset[str]:
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            return parse_mount_targets(f.read())
    except OSError:
        return frozenset()


def mount_pseudo_filesystems(*, dry_run: bool) -> list[str]:
    """Mount what is not mounted yet; returns what was done (or, in a dry run, what would be)."""
    done = []
    for m in PSEUDO_FILESYSTEMS:
        if m.target in mounted_targets():
            continue
        if not dry_run:
            os.makedirs(m.target, mode=0o755, exist_ok=True)
        done.append(syscalls.mount(m.source, m.target, m.fstype, m.flags, m.data, dry_run=dry_run))
    return done
