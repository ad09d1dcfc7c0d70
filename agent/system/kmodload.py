"""Load kernel modules with finit_module(2), the way insmod does, with no modprobe in the image.

The builder has already resolved dependencies: config.module_load_order lists each module's .ko files,
dependencies first. A module that is already loaded (or built in) answers EEXIST, which is success here.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable

from agent.system import syscalls

# finit_module has no glibc wrapper before 2.39 (and none in older sysroots): call it by number.
FINIT_MODULE_NUMBER = {"x86_64": 313, "aarch64": 273, "riscv64": 273, "ppc64le": 353, "s390x": 344}
# <linux/module.h>: let the kernel decompress a .ko.xz/.ko.zst/.ko.gz itself (Linux 6.6+ only).
MODULE_INIT_COMPRESSED_FILE = 4
COMPRESSED_SUFFIXES = (".xz", ".zst", ".gz")


class ModuleLoadError(OSError):
    """A .ko file the kernel refused; the message names the file and the kernel's reason."""


def syscall_number(machine: str | None = None) -> int:
    machine = machine or os.uname().machine
    try:
        return FINIT_MODULE_NUMBER[machine]
    except KeyError:
        raise ModuleLoadError(
            errno.ENOSYS,
            f"finit_module: no system call number known for machine {machine!r}; add it to "
            "agent/system/kmodload.py FINIT_MODULE_NUMBER",
        ) from None


def finit_module(path: str, params: str = "", compressed: bool | None = None) -> bool:
    """Load one .ko file. True if loaded now, False if it was already there (EEXIST). `compressed`: whether
    the kernel must decompress it (by default, from its name)."""
    if compressed is None:
        compressed = path.endswith(COMPRESSED_SUFFIXES)
    flags = MODULE_INIT_COMPRESSED_FILE if compressed else 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = syscalls.libc()
        result = libc.syscall(
            ctypes.c_long(syscall_number()), ctypes.c_int(fd), ctypes.c_char_p(params.encode()), ctypes.c_int(flags)
        )
        if result != 0:
            err = ctypes.get_errno()
            if err == errno.EEXIST:
                return False
            raise ModuleLoadError(err, f"finit_module({path}): {os.strerror(err)} (see the kernel log above)")
        return True
    finally:
        os.close(fd)


def load_at_start(
    modules: Iterable[str], load_order: dict[str, tuple[str, ...]], *, dry_run: bool, say: Callable[[str, str], None]
) -> list[str]:
    """The image's `modules` (config: not NIC drivers, which follow detection): loaded in order before the
    stage's work, each with its dependencies. A module that fails is reported and the rest still load:
    what needed it then fails with its own message. Returns the names loaded."""
    loaded: set[str] = set()
    names = []
    for name in modules:
        try:
            load_chain(load_order.get(name, ()), dry_run=dry_run, loaded=loaded)  # none: built into the kernel
            names.append(name)
        except OSError as exc:
            say(f"beoboot: cannot load module {name}: {exc}", "error")
    return names


def load_chain(
    paths: Iterable[str], *, dry_run: bool, loaded: set[str] | None = None, loader: Callable[[str], bool] | None = None
) -> list[str]:
    """Load the .ko files in order, skipping those in `loaded` (and adding to it). Returns what was done."""
    done = []
    seen = loaded if loaded is not None else set()
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        if dry_run:
            done.append(f"finit_module({path})")
            continue
        if (loader or finit_module)(path):
            done.append(f"finit_module({path})")
    return done
