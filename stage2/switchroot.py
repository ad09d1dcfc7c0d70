"""Move from the initramfs to a new root and free the old one.

The initramfs rootfs cannot be pivot_root'ed, so this is switch_root(8) semantics: delete every file of
the old root (not crossing into other mounts), move the new root's mount onto /, chroot into it, and exec
its init. Deleting matters: files left in rootfs would keep their memory for as long as the node runs.
"""

from __future__ import annotations

import os
import stat

from agent.system import syscalls

MS_MOVE = 0x2000
PSEUDO_MOUNTS = ("/dev", "/proc", "/sys", "/run")


def mem_available_kib(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def delete_tree(top: str, root_dev: int, keep: str) -> int:
    """Remove everything under `top` on device `root_dev` except the `keep` mount point; returns bytes freed."""
    freed = 0
    for name in os.listdir(top):
        path = os.path.join(top, name)
        if path == keep:
            continue
        st = os.lstat(path)
        if st.st_dev != root_dev:
            continue  # another mount (the new root, /proc, ...): not ours to delete
        if stat.S_ISDIR(st.st_mode):
            freed += delete_tree(path, root_dev, keep)
            try:
                os.rmdir(path)
            except OSError:
                pass  # a mount point below it is still in use
        else:
            freed += st.st_size
            os.unlink(path)
    return freed


def switch_root(
    new_root: str,
    init: str,
    argv: list[str],
    env: dict[str, str],
    *,
    log,
    dry_run: bool,
    memory_report: str | None = None,
) -> None:
    """Never returns when it works: the new root's init replaces this process (and stays PID 1).
    After the old root is deleted, nothing may import a module: the stdlib zip is gone with it."""
    if not os.path.isfile(os.path.join(new_root, init.lstrip("/"))):
        raise FileNotFoundError(f"{new_root}{init} does not exist: the new root has no init")
    if dry_run:
        log(f"beoboot: dry run: would switch_root({new_root!r}, {init!r})")
        return
    before = mem_available_kib()
    for mount in PSEUDO_MOUNTS:
        target = new_root + mount
        if os.path.ismount(mount) and os.path.isdir(target):
            syscalls.mount(mount, target, "", MS_MOVE, dry_run=False)
    freed = delete_tree("/", os.lstat("/").st_dev, keep=new_root)
    after = mem_available_kib(new_root + "/proc/meminfo")  # /proc has moved with the new root
    log(f"beoboot: freed stage 2 ramdisk: {freed // 1024} KiB of files; MemAvailable {before} kB -> {after} kB")
    if memory_report:
        # This process's own modules are gone now (no more imports, no HTTP): the next init reports it.
        with open(new_root + memory_report, "w") as f:
            f.write(
                f'{{"freed_kib": {freed // 1024}, "mem_available_before_kib": {before or 0}, '
                f'"mem_available_after_kib": {after or 0}}}\n'
            )
    os.chdir(new_root)
    syscalls.mount(new_root, "/", "", MS_MOVE, dry_run=False)
    os.chroot(".")
    os.chdir("/")
    os.execve(init, argv, env)
