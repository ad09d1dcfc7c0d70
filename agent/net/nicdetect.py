"""Find the node's network cards on the PCI bus, load their drivers, and find their interfaces.

This does what udev does for a NIC, from the config the builder wrote: a device's modalias is matched
against config.nic_table (fnmatch patterns from modules.alias) and every matching module is loaded with
its dependencies (config.module_load_order). A virtio-net card takes two steps: virtio_pci claims the PCI
function and creates a virtio device (virtio:d00000001v...), which virtio_net then binds.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.config import AgentConfig, NicAlias
from agent.system import kmodload

PCI_DEVICES = "bus/pci/devices"
NETWORK_CLASS = 0x02  # PCI base class "network controller"
CHECK_HINT = "add its driver to the image's `drivers` (check with `beoboot-build nics --check`), rebuild, and retry"


@dataclass(frozen=True)
class PciDevice:
    slot: str  # "0000:00:02.0"
    vendor: str  # "8086"
    device: str  # "100e"
    class_code: int  # 0x020000
    modalias: str

    @property
    def is_network(self) -> bool:
        return self.class_code >> 16 == NETWORK_CLASS

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"


@dataclass(frozen=True)
class NicPlan:
    device: PciDevice
    modules: tuple[str, ...]  # matching modules, in load order; empty: no driver in this image


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _hex_id(text: str | None) -> str:
    return (text or "0x0000").removeprefix("0x").lower()


def read_pci_devices(sysfs: str = "/sys") -> list[PciDevice]:
    root = os.path.join(sysfs, PCI_DEVICES)
    try:
        slots = sorted(os.listdir(root))
    except OSError:
        return []
    devices = []
    for slot in slots:
        base = os.path.join(root, slot)
        modalias = _read(os.path.join(base, "modalias"))
        if modalias is None:
            continue
        class_text = _read(os.path.join(base, "class")) or "0x0"
        devices.append(
            PciDevice(
                slot,
                _hex_id(_read(os.path.join(base, "vendor"))),
                _hex_id(_read(os.path.join(base, "device"))),
                int(class_text, 16),
                modalias,
            )
        )
    return devices


def match_modules(modalias: str, table: Iterable[NicAlias]) -> tuple[str, ...]:
    """Modules whose alias pattern matches, sorted: the kernel's alias index is case-sensitive fnmatch."""
    return tuple(sorted({row.module for row in table if fnmatch.fnmatchcase(modalias, row.pattern)}))


def plan(devices: Iterable[PciDevice], table: Iterable[NicAlias]) -> list[NicPlan]:
    """One plan per network-class device: the modules to load for it (possibly none)."""
    rows = list(table)
    return [NicPlan(d, match_modules(d.modalias, rows)) for d in devices if d.is_network]


def describe_missing(device: PciDevice) -> str:
    return (
        f"beoboot: nic {device.slot} {device.ids} (class {device.class_code:06x}) has no driver in this image: "
        f"{CHECK_HINT}"
    )


def bound_driver(slot: str, sysfs: str = "/sys") -> str | None:
    """The driver bound to a PCI device (its `driver` link), or None."""
    link = os.path.join(sysfs, PCI_DEVICES, slot, "driver")
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def virtio_children(slot: str, sysfs: str = "/sys") -> list[str]:
    """Directories of the virtio devices a virtio_pci function has created (virtio0, ...)."""
    base = os.path.join(sysfs, PCI_DEVICES, slot)
    try:
        return sorted(os.path.join(base, n) for n in os.listdir(base) if n.startswith("virtio") and n[6:].isdigit())
    except OSError:
        return []


def interfaces_of(slot: str, sysfs: str = "/sys") -> list[str]:
    """Network interfaces that sit on a PCI device, directly (net/eth0) or under its virtio child."""
    base = os.path.join(sysfs, PCI_DEVICES, slot)
    found = []
    for parent in [base, *virtio_children(slot, sysfs)]:
        try:
            found += os.listdir(os.path.join(parent, "net"))
        except OSError:
            pass
    return sorted(found)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class DriverLoader:
    config: AgentConfig
    dry_run: bool
    say: Callable[[str], None]
    loaded: set[str]

    def load(self, module: str) -> bool:
        """Load a module and its dependencies; False (and a console line) if the kernel refused one."""
        paths = self.config.module_load_order.get(module, ())  # none: built into the kernel
        try:
            for call in kmodload.load_chain(paths, dry_run=self.dry_run, loaded=self.loaded):
                if self.dry_run:
                    self.say(f"beoboot: dry run: would {call}")
        except OSError as exc:
            self.say(f"beoboot: cannot load {module}: {exc}")
            return False
        return True


def load_nic_drivers(
    config: AgentConfig, *, dry_run: bool, say: Callable[[str], None], sysfs: str = "/sys", child_timeout: float = 5.0
) -> list[NicPlan]:
    """Load the drivers of every network-class PCI device; one console line per device. Returns the plans."""
    loader = DriverLoader(config, dry_run, say, set())
    plans = plan(read_pci_devices(sysfs), config.nic_table)
    if not plans:
        say("beoboot: no network controller (PCI class 02) found")
    for nic in plans:
        if not nic.modules:
            say(describe_missing(nic.device))
            continue
        for module in nic.modules:
            loader.load(module)
        if dry_run:
            say(f"beoboot: nic {nic.device.slot} {nic.device.ids} -> {' '.join(nic.modules)} (dry run: not loaded)")
            continue
        say(_report_binding(nic, loader, config.nic_table, sysfs, child_timeout))
    return plans


def _report_binding(
    nic: NicPlan, loader: DriverLoader, table: tuple[NicAlias, ...], sysfs: str, child_timeout: float
) -> str:
    """Which driver took the device: the module the sysfs `driver` link names, via virtio for virtio_pci."""
    slot, head = nic.device.slot, f"beoboot: nic {nic.device.slot} {nic.device.ids} ->"
    wait_for(lambda: bound_driver(slot, sysfs) is not None, child_timeout)
    driver = bound_driver(slot, sysfs)
    if driver is None:
        return f"{head} loaded {' '.join(nic.modules)} but none took the device; {CHECK_HINT}"
    if driver.replace("-", "_") != "virtio_pci":
        return f"{head} {driver}"
    # virtio_pci registers the virtio device asynchronously to this call; give it a moment to appear.
    wait_for(lambda: bool(virtio_children(slot, sysfs)), child_timeout)
    drivers = []
    for child in virtio_children(slot, sysfs):
        modules = match_modules(_read(os.path.join(child, "modalias")) or "", table)
        for module in modules:
            loader.load(module)
        wait_for(lambda: os.path.islink(os.path.join(child, "driver")), child_timeout)
        try:
            drivers.append(os.path.basename(os.readlink(os.path.join(child, "driver"))))
        except OSError:
            drivers.append(f"nothing ({' '.join(modules) or 'no module in the image'} did not bind)")
    if not drivers:
        return f"{head} virtio_pci, but no virtio device appeared under it"
    return f"{head} {' '.join(drivers)} (via virtio_pci)"


def carrier(interface: str, sysfs: str = "/sys") -> bool:
    """Reading `carrier` fails (EINVAL) while the interface is down: that is no carrier too."""
    return _read(os.path.join(sysfs, "class/net", interface, "carrier")) == "1"


def mac_address(interface: str, sysfs: str = "/sys") -> bytes:
    text = _read(os.path.join(sysfs, "class/net", interface, "address")) or ""
    return bytes.fromhex(text.replace(":", ""))


def mac_text(interface: str, sysfs: str = "/sys") -> str:
    """The interface's MAC as the master knows nodes by it: "52:54:00:12:34:56"."""
    return ":".join(f"{b:02x}" for b in mac_address(interface, sysfs))
