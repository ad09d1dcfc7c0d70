"""What a node tells the master about itself when it registers: CPU, memory, PCI devices, disks.

Parsers take text (table-tested on a build host); `probe()` reads /proc and /sys. Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.protocol import BusDevice, Disk, Hardware, Load, PciDevice

# Block devices that are not disks: nothing to report to the master about them.
VIRTUAL_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd")


def parse_cpuinfo(text: str) -> tuple[str, int]:
    """(model name, logical CPU count) from /proc/cpuinfo."""
    model, count = "", 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            count += 1
        elif key == "model name" and not model:
            model = value.strip()
    return model, count


def parse_meminfo(text: str) -> int:
    """MemTotal in KiB from /proc/meminfo; 0 if absent."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def _driver(dev: Path) -> str | None:
    """The module name of the driver bound to a device (its `driver` link), or None when none is."""
    driver = dev / "driver"
    return os.path.basename(os.readlink(driver)) if driver.is_symlink() else None


def pci_devices(sys_root: Path = Path("/sys")) -> tuple[PciDevice, ...]:
    devices = []
    base = sys_root / "bus/pci/devices"
    for slot in sorted(os.listdir(base)) if base.is_dir() else ():
        dev = base / slot
        devices.append(
            PciDevice(
                slot=slot,
                vendor=_read(dev / "vendor"),
                device=_read(dev / "device"),
                pci_class=_read(dev / "class"),
                driver=_driver(dev),
                modalias=_read(dev / "modalias"),
            )
        )
    return tuple(devices)


def bus_devices(bus: str, sys_root: Path = Path("/sys")) -> tuple[BusDevice, ...]:
    """The devices on a bus that have a modalias (SCSI hosts and targets have none: no driver binds them)."""
    base = sys_root / "bus" / bus / "devices"
    names = sorted(os.listdir(base), key=lambda name: (len(name), name)) if base.is_dir() else ()
    found = ((name, _read(base / name / "modalias")) for name in names)
    return tuple(BusDevice(name, alias, _driver(base / name)) for name, alias in found if alias)


def loaded_modules(proc_root: Path = Path("/proc")) -> tuple[str, ...]:
    """Names of the loaded modules (/proc/modules), sorted; built-in ones are not listed there."""
    return tuple(sorted(line.split()[0] for line in _read(proc_root / "modules").splitlines() if line.split()))


def disks(sys_root: Path = Path("/sys")) -> tuple[Disk, ...]:
    out = []
    base = sys_root / "block"
    for name in sorted(os.listdir(base)) if base.is_dir() else ():
        if name.startswith(VIRTUAL_BLOCK_PREFIXES):
            continue
        sectors = _read(base / name / "size")  # always in 512-byte units, whatever the logical block size
        model = _read(base / name / "device/model") or None
        out.append(Disk(name, int(sectors) * 512 if sectors.isdigit() else 0, model))
    return tuple(out)


def probe(proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> Hardware:
    model, cpus = parse_cpuinfo(_read(proc_root / "cpuinfo"))
    return Hardware(
        cpu_model=model,
        cpus=cpus,
        memory_kib=parse_meminfo(_read(proc_root / "meminfo")),
        pci=pci_devices(sys_root),
        disks=disks(sys_root),
        virtio=bus_devices("virtio", sys_root),
        modules=loaded_modules(proc_root),
        scsi=bus_devices("scsi", sys_root),
    )


def load(proc_root: Path = Path("/proc")) -> Load | None:
    """The one-minute load average and memory, or None where /proc does not say."""
    average, meminfo = _read(proc_root / "loadavg"), _read(proc_root / "meminfo")
    fields = {}
    for line in (meminfo or "").splitlines():
        name, _, rest = line.partition(":")
        if rest.split() and rest.split()[0].isdigit():
            fields[name] = int(rest.split()[0])
    try:
        return Load(float(average.split()[0]), fields["MemTotal"], fields["MemAvailable"])
    except (IndexError, ValueError, KeyError):
        return None


def uptime(proc_root: Path = Path("/proc")) -> float | None:
    text = _read(proc_root / "uptime")
    return parse_uptime(text) if text else None
