"""Stage 3: load the drivers the master sent for the node's hardware (agent.protocol.DriverModule).

They come in the registration's answer, in load order (dependencies first), each with the firmware files
it may ask for. Their files are fetched by content hash through a libcache of their own in stage 3's root,
DRIVERS_DIR: this runs before the environment root exists, whose local disk may be one these drivers
drive. Firmware goes to /lib/firmware (where the kernel's loader looks; PID 1 shares its root with the
kernel's own threads) before any module loads, and modules load with finit_module(2), as stage 1 and 2 load
theirs. A module that fails is said and the rest still load. The drivers loaded may find more devices (a
SATA controller's disks, on the SCSI bus): once the buses settle, the node asks the master for theirs.

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
from agent.masterlink import MasterLink
from agent.system import kmodload
from stage3.libcache import LibCache, LibCacheError, object_name

DRIVERS_DIR = "/run/beoboot/drivers"
FIRMWARE_DIR = "/lib/firmware"
SETTLE = 1.5  # seconds without a new device or binding: the drivers loaded have probed and scanned
SETTLE_MAX = 10.0
ROUNDS = 3  # registration's drivers, then those of the devices they bring (disks), and once more

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


def settle(settle: float = SETTLE, wait: float = SETTLE_MAX, sys_root: str = "/sys") -> p.Hardware:
    """The node's hardware once no device has appeared or been bound for `settle` seconds (the drivers just
    loaded probe, and scan the buses they drive), or after `wait` seconds."""
    start = time.monotonic()
    hardware = hwprobe.probe(sys_root=Path(sys_root))
    state, since = _state(hardware), start
    while time.monotonic() - since < settle and time.monotonic() - start < wait:
        time.sleep(0.25)
        hardware = hwprobe.probe(sys_root=Path(sys_root))
        if _state(hardware) != state:
            state, since = _state(hardware), time.monotonic()
    return hardware


def _state(hardware: p.Hardware) -> set[tuple[str, str | None]]:
    return {(d.slot, d.driver) for d in hardware.pci} | {(d.name, d.driver) for d in (*hardware.virtio, *hardware.scsi)}


def load_all(
    first: tuple[p.DriverModule, ...], link: MasterLink, say: Say, *, token: Callable[[], str], dry_run: bool
) -> p.Hardware:
    """Load the drivers the registration brought; while new devices without a driver appear (the disks
    of a SATA controller just driven), ask the master for theirs. The node's hardware at the end."""
    asked = {name for name, _alias in link.hardware.unbound()}
    drivers = first
    for _ in range(ROUNDS):
        load(drivers, link.base_url, say, token=token, dry_run=dry_run)
        hardware = settle()
        new = {name for name, _alias in hardware.unbound()} - asked
        if not new:
            break
        asked |= new
        drivers = link.drivers(hardware)
        if not drivers:
            break
    return hardware
