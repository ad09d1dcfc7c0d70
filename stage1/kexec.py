"""Two Kernel Monte: load a downloaded kernel and initramfs with kexec_file_load(2) and jump into them.

kexec_file_load takes file descriptors, so the kernel itself parses (and may verify) the bzImage; no
purgatory or segment list is built here, unlike kexec_load(2).
"""

from __future__ import annotations

import ctypes
import os

from agent.system import syscalls

SYS_KEXEC_FILE_LOAD = 320  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
LINUX_REBOOT_CMD_KEXEC = 0x45584543


def load(kernel: str, initrd: str, cmdline: str, *, dry_run: bool) -> str:
    call = f"kexec_file_load({kernel!r}, {initrd!r}, {cmdline!r})"
    if dry_run:
        return call
    libc = syscalls.libc()
    libc.syscall.restype = ctypes.c_long
    encoded = cmdline.encode() + b"\0"  # the length counts the terminating NUL
    kernel_fd = os.open(kernel, os.O_RDONLY)
    initrd_fd = os.open(initrd, os.O_RDONLY)
    try:
        result = libc.syscall(
            ctypes.c_long(SYS_KEXEC_FILE_LOAD),
            ctypes.c_int(kernel_fd),
            ctypes.c_int(initrd_fd),
            ctypes.c_ulong(len(encoded)),
            ctypes.c_char_p(encoded),
            ctypes.c_ulong(0),
        )
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{call}: {os.strerror(err)}")
    finally:
        os.close(kernel_fd)
        os.close(initrd_fd)
    return call


def execute(*, dry_run: bool) -> str:
    """reboot(LINUX_REBOOT_CMD_KEXEC): returns only if the kernel refused it."""
    call = "reboot(LINUX_REBOOT_CMD_KEXEC)"
    if not dry_run:
        syscalls.sync(dry_run=False)
        libc = syscalls.libc()
        if libc.reboot(ctypes.c_int(LINUX_REBOOT_CMD_KEXEC).value) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{call}: {os.strerror(err)}")
    return call
