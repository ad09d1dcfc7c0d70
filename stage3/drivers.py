"""Stage 3: load the drivers the master sent for the node's hardware (agent.protocol.DriverModule).

They come in the registration's answer, in load order (dependencies first), each with the firmware files
it may ask for. Their files are fetched by content hash through a libcache of their own in stage 3's root,
DRIVERS_DIR: this runs before the environment root exists, whose local disk may be one these drivers
drive. Firmware goes to /lib/firmware (where the kernel's loader looks; PID 1 shares its root with the
kernel's own threads) before any module loads, and modules load with finit_module(2), as stage 1 and 2 load
theirs. A module that fails is said and the rest still load.

Standard library only: runs in the node image.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent import hwprobe
from agent import protocol as p
from agent.system import kmodload
from stage3.libcache import LibCache, LibCacheError, object_name

DRIVERS_DIR = "/run/beoboot/drivers"
FIRMWARE_DIR = "/lib/firmware"
BIND_WAIT = 5.0  # seconds for the devices the drivers were sent for to be bound (probing may be async)

Say = Callable[..., None]


class DriverError(Exception):
    pass


def firmware_target(path: str, root: str = "/") -> str:
    """Where a firmware file the master names goes: under /lib/firmware, never elsewhere."""
    norm = os.path.normpath(path)
    if not norm.startswith(FIRMWARE_DIR + "/") or norm != path:
        raise DriverError(f"firmware path {path!r} is not a plain path under {FIRMWARE_DIR}")
    return os.path.join(root, norm.lstrip("/"))


def place_firmware(source: str, target: str) -> None:
    """Copy a cached object to its firmware path: a temporary name, then rename (the kernel may be reading)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.beoboot-tmp"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)
    os.rename(tmp, target)


def load(
    drivers: Iterable[p.DriverModule],
    master_url: str,
    say: Say,
    *,
    token: Callable[[], str],
    dry_run: bool,
    root: str = "/",
    loader: Callable[[str, bool], bool] | None = None,
) -> list[str]:
    """Fetch, place and load the drivers; the names loaded. Nothing is raised: a node without a driver
    for some device still comes up, and says what failed."""
    drivers = list(drivers)
    if not drivers:
        return []
    base = os.path.join(root, DRIVERS_DIR.lstrip("/"))
    cache = LibCache(os.path.join(base, ".libcache"), base, master_url, durable=False, token=token)
    try:
        cache.ensure([d.module for d in drivers] + [f for d in drivers for f in d.firmware])
    except (LibCacheError, OSError) as exc:
        say(f"beoboot: cannot fetch the drivers the master sent: {exc}", "error")
        return []

    def cached(entry: p.JobFile) -> str:
        return os.path.join(cache.objects_dir, object_name(entry))

    for driver in drivers:
        for fw in driver.firmware:
            try:
                place_firmware(cached(fw), firmware_target(fw.path, root))
            except (DriverError, OSError) as exc:
                say(f"beoboot: firmware for {driver.name}: {exc}", "error")
    loaded = []
    load_one = loader or (lambda path, compressed: kmodload.finit_module(path, compressed=compressed))
    for driver in drivers:
        try:
            if dry_run:
                say(f"beoboot: (dry run) would load {driver.name}")
            else:
                load_one(cached(driver.module), driver.compressed)
            loaded.append(driver.name)
        except OSError as exc:
            say(f"beoboot: cannot load driver {driver.name} (for {driver.device}): {exc}", "error")
    fw_count = sum(len(d.firmware) for d in drivers)
    say(f"beoboot: drivers from the master loaded: {' '.join(loaded) or 'none'} ({fw_count} firmware files)")
    return loaded


def wait_bound(devices: set[str], wait: float = BIND_WAIT, sys_root: str = "/sys") -> p.Hardware:
    """The node's hardware once the devices named have a driver, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        hardware = hwprobe.probe(sys_root=Path(sys_root))
        bound = {d.slot for d in hardware.pci if d.driver} | {d.name for d in hardware.virtio if d.driver}
        if devices <= bound or time.monotonic() > deadline:
            return hardware
        time.sleep(0.2)
