"""The few Linux system calls the agent makes as PID 1, through ctypes on the C library.

`CDLL(None)` is dlopen(NULL): the symbols of the interpreter and everything it is linked with, so libc
is found without ctypes.util.find_library (which runs ldconfig or gcc, neither of which is in the image).

Every actor takes `dry_run`: in a dry run nothing is called, the would-be call is returned as text, so
the agent can run on a build host (u-root's WithDryRun).
"""

from __future__ import annotations

import ctypes
import os

# <sys/mount.h>
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
# <linux/reboot.h>: the `cmd` argument of reboot(2), which glibc passes through as RB_POWER_OFF.
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.mount.restype = ctypes.c_int
        _libc.reboot.argtypes = [ctypes.c_int]
        _libc.reboot.restype = ctypes.c_int
        _libc.sync.argtypes = []
        _libc.sync.restype = None
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "", *, dry_run: bool) -> str:
    call = f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})"
    if not dry_run:
        result = libc().mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
        _check(result, call)
    return call


def sync(*, dry_run: bool) -> str:
    if not dry_run:
        libc().sync()
    return "sync()"


def power_off(*, dry_run: bool) -> str:
    """reboot(LINUX_REBOOT_CMD_POWER_OFF); returns only if the kernel refused it."""
    call = "reboot(LINUX_REBOOT_CMD_POWER_OFF)"
    if not dry_run:
        # glibc's reboot() takes the command as a signed int; the constant does not fit a positive one.
        _check(libc().reboot(ctypes.c_int(LINUX_REBOOT_CMD_POWER_OFF).value), call)
    return call


LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_HALT = 0xCDEF0123


def restart(*, dry_run: bool) -> str:
    """reboot(LINUX_REBOOT_CMD_RESTART): the node boots again from the network; returns only on refusal."""
    call = "reboot(LINUX_REBOOT_CMD_RESTART)"
    if not dry_run:
        libc().sync()
        _check(libc().reboot(ctypes.c_int(LINUX_REBOOT_CMD_RESTART).value), call)
    return call


def halt(*, dry_run: bool) -> str:
    """reboot(LINUX_REBOOT_CMD_HALT): the CPUs stop and the machine stays on; returns only on refusal."""
    call = "reboot(LINUX_REBOOT_CMD_HALT)"
    if not dry_run:
        libc().sync()
        _check(libc().reboot(ctypes.c_int(LINUX_REBOOT_CMD_HALT).value), call)
    return call
