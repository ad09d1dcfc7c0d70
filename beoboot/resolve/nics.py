"""The NIC table: which module drives which network card, taken from the kernel's own modules.alias.

A *network driver* here is a loadable module under `kernel/drivers/net/` with a `pci:` or `virtio:` alias
(the buses a cluster node's boot NIC sits on). That takes in Ethernet, Wi-Fi, CAN, WAN cards and so on:
the table lists them all. `select_drivers(kmods, "all")` means the *Ethernet* ones: everything except the
link types in NOT_ETHERNET, which cannot carry a network boot. USB, Xen (`xen:vif`) and Hyper-V (`vmbus:`)
NICs are not covered.

The agent in the image reads the table and loads every module whose pattern matches a device's modalias,
the way udev does; `check_devices` answers "would our images find a driver for this site's hardware?".
A `drivers` item "lspci:FILE" asks the other way round: the drivers of exactly the NICs of an `lspci -n`
dump, so an image carries a site's few drivers instead of every one (a few hundred KB instead of 6 MB).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.config import NicAlias
from beoboot.errors import ConfigError, ModuleError, UsageError
from beoboot.regularfile import read_regular
from beoboot.resolve.kmod import KernelModules, normalise_module_name

log = logging.getLogger("beoboot.resolve.nics")

NET_DRIVER_DIR = "kernel/drivers/net/"
NIC_BUSES = ("pci:", "virtio:")
# Subdirectories of drivers/net whose devices are not Ethernet NICs, so "all" leaves them out.
NOT_ETHERNET = {
    "wireless": "Wi-Fi: no network boot without credentials",
    "wwan": "cellular modems",
    "can": "CAN bus controllers",
    "arcnet": "ARCnet",
    "wan": "synchronous serial WAN cards",
    "fddi": "FDDI",
    "hippi": "HIPPI",
    "ieee802154": "low-rate wireless PAN",
    "hamradio": "amateur radio",
    "appletalk": "LocalTalk",
    "usb": "USB network adapters (no PCI alias)",
}


@dataclass(frozen=True)
class Transport:
    """A bus driver outside drivers/net that a NIC driver cannot work without."""

    module: str
    carries: str  # the network driver that binds the device the transport creates
    why: str


TRANSPORTS = (
    Transport(
        "virtio_pci",
        "virtio_net",
        "a virtio-net PCI function (1af4:1000, 1af4:1041) is claimed by virtio_pci, which creates the virtio "
        "device (virtio:d00000001v*) that virtio_net binds",
    ),
)


def _subdir(relative_path: str) -> str:
    """'kernel/drivers/net/ethernet/intel/e1000/e1000.ko' -> 'ethernet'; top-level drivers -> ''."""
    rest = relative_path[len(NET_DRIVER_DIR) :]
    return rest.split("/", 1)[0] if "/" in rest else ""


def network_drivers(kmods: KernelModules) -> list[str]:
    """Loadable modules under kernel/drivers/net/ with a pci: or virtio: alias, sorted."""
    found = {
        module
        for pattern, module in kmods.alias_rows()
        if pattern.startswith(NIC_BUSES) and kmods.relative_path(module).startswith(NET_DRIVER_DIR)
    }
    return sorted(found)


def ethernet_drivers(kmods: KernelModules) -> list[str]:
    return [m for m in network_drivers(kmods) if _subdir(kmods.relative_path(m)) not in NOT_ETHERNET]


LSPCI = "lspci:"  # a `drivers` item naming an lspci dump: "lspci:site-lspci.txt"
MAX_LSPCI_BYTES = 4 << 20  # `lspci -nnvv` of a large server is a few hundred KB


def lspci_dumps(choice: str | Iterable[str], base: Path) -> list[Path]:
    """The dump files a `drivers` choice names, a relative one taken from `base` (the config's directory)."""
    wanted = [choice] if isinstance(choice, str) else list(choice)
    return [base / item[len(LSPCI) :] for item in wanted if item.startswith(LSPCI)]


def select_drivers(kmods: KernelModules, choice: str | Iterable[str], base: Path | None = None) -> list[str]:
    """ "all" (the Ethernet drivers), module names and glob patterns ("e1000*", "virtio_net"), and
    "lspci:FILE" (the drivers of the NICs in an lspci dump, FILE relative to `base`, by default the current
    directory), sorted.

    A glob is matched against the network drivers; a plain name may be any module of the kernel (a site
    may need a driver we do not class as a NIC driver). A name or glob that matches nothing is an error.
    """
    wanted = [choice] if isinstance(choice, str) else list(choice)
    candidates = network_drivers(kmods)
    known = set(kmods.module_names())
    selected: set[str] = set()
    for item in wanted:
        if item == "all":
            selected.update(ethernet_drivers(kmods))
            continue
        if item.startswith(LSPCI):
            (dump,) = lspci_dumps(item, base or Path.cwd())
            selected.update(lspci_drivers(kmods, read_lspci(dump), str(dump)))
            continue
        pattern = normalise_module_name(item)
        if any(ch in pattern for ch in "*?["):
            hits = [m for m in candidates if fnmatch.fnmatchcase(m, pattern)]
        else:
            hits = [pattern] if pattern in known else []
        if not hits:
            raise ModuleError(
                f"NIC driver {item!r} matches no network driver of kernel {kmods.version}",
                hint="`beoboot-build nics` lists them; use a module name or a glob such as 'e1000*'",
            )
        selected.update(hits)
    return sorted(selected)


def nic_table(kmods: KernelModules, drivers: Iterable[str] | None = None) -> list[NicAlias]:
    """The pci:/virtio: alias patterns of the network drivers (or of `drivers`), sorted by pattern, module.

    Transports (virtio_pci for virtio_net) come along with the driver that needs them.
    """
    chosen = set(network_drivers(kmods) if drivers is None else (normalise_module_name(d) for d in drivers))
    chosen |= {t.module for t in TRANSPORTS if t.carries in chosen and t.module in set(kmods.module_names())}
    rows = {
        NicAlias(pattern, module)
        for pattern, module in kmods.alias_rows()
        if module in chosen and pattern.startswith(NIC_BUSES)
    }
    return sorted(rows, key=lambda row: (row.pattern, row.module))


def match(modalias: str, table: Iterable[NicAlias]) -> list[str]:
    """Modules whose pattern matches a device's modalias: fnmatch, case-sensitive, like the kernel's index."""
    return sorted({row.module for row in table if fnmatch.fnmatchcase(modalias, row.pattern)})


# -- lspci dumps --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PciDevice:
    slot: str
    class_code: str  # four hex digits, base class and subclass: "0200" is an Ethernet controller
    vendor: str  # four hex digits, lower case as lspci prints them
    device: str
    prog_if: str = "00"  # lspci prints "(prog-if XX)" only when it is not 0
    subvendor: str | None = None  # only `lspci -nnv` shows the subsystem
    subdevice: str | None = None

    @property
    def is_network(self) -> bool:
        return self.class_code.startswith("02")

    def modalias(self) -> str:
        """The kernel's PCI modalias; unknown subsystem ids are left as `*`."""
        sv = f"0000{self.subvendor.upper()}" if self.subvendor else "*"
        sd = f"0000{self.subdevice.upper()}" if self.subdevice else "*"
        return (
            f"pci:v0000{self.vendor.upper()}d0000{self.device.upper()}sv{sv}sd{sd}"
            f"bc{self.class_code[:2].upper()}sc{self.class_code[2:].upper()}i{self.prog_if.upper()}"
        )


_SLOT = r"(?P<slot>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])"
_LSPCI_N = re.compile(
    _SLOT + r"\s+(?P<cls>[0-9a-fA-F]{4}):\s+(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})(?P<rest>.*)$"
)
_LSPCI_NN = re.compile(
    _SLOT + r"\s+.*?\[(?P<cls>[0-9a-fA-F]{4})\]:.*\[(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})\](?P<rest>.*)$"
)
_PROG_IF = re.compile(r"\(prog-if (?P<pi>[0-9a-fA-F]{2})")
_SUBSYSTEM = re.compile(r"^\s+Subsystem:.*\[(?P<sv>[0-9a-fA-F]{4}):(?P<sd>[0-9a-fA-F]{4})\]\s*$")


def parse_lspci(text: str, source: str = "lspci dump") -> list[PciDevice]:
    """Devices of an `lspci -n` or `lspci -nn` dump (`-nnv` too: its Subsystem lines are used)."""
    devices: list[PciDevice] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():  # a -v detail line belongs to the device above
            sub = _SUBSYSTEM.match(line)
            if sub and devices:
                last = devices[-1]
                devices[-1] = dataclasses.replace(last, subvendor=sub["sv"].lower(), subdevice=sub["sd"].lower())
            continue
        found = _LSPCI_N.match(line) or _LSPCI_NN.match(line)
        if not found:
            raise UsageError(
                f"{source}:{number}: not an `lspci -n` line: {line!r}",
                hint="make the dump with `lspci -n` or `lspci -nn` (numeric ids are needed)",
            )
        prog_if = _PROG_IF.search(found["rest"])
        devices.append(
            PciDevice(
                found["slot"],
                found["cls"].lower(),
                found["ven"].lower(),
                found["dev"].lower(),
                prog_if["pi"].lower() if prog_if else "00",
            )
        )
    return devices


_PCI_FIELDS = re.compile(r"pci:v(?P<v>[^d]+)d(?P<d>.+?)sv(?P<sv>.+?)sd(?P<sd>.+?)bc(?P<bc>.+?)sc(?P<sc>.+?)i(?P<i>.*)$")


def matches_device(pattern: str, device: PciDevice) -> bool:
    """Does a pci: alias pattern match the device, taking subsystem ids we do not know as matching?"""
    if device.subvendor is not None:
        return fnmatch.fnmatchcase(device.modalias(), pattern)
    fields = _PCI_FIELDS.match(pattern)
    if not fields:
        return fnmatch.fnmatchcase(device.modalias(), pattern)
    known = {
        "v": f"0000{device.vendor}",
        "d": f"0000{device.device}",
        "bc": device.class_code[:2],
        "sc": device.class_code[2:],
        "i": device.prog_if,
    }
    return all(fnmatch.fnmatchcase(value.upper(), fields[key]) for key, value in known.items())


@dataclass(frozen=True)
class Coverage:
    device: PciDevice
    modules: tuple[str, ...]  # in the order the agent would load them; empty: NOT COVERED

    @property
    def covered(self) -> bool:
        return bool(self.modules)


def check_devices(devices: Iterable[PciDevice], table: Iterable[NicAlias]) -> list[Coverage]:
    """For each network-class device (class 02xx), the drivers the images would load for it."""
    table = list(table)
    rows = [row for row in table if row.pattern.startswith("pci:")]
    table_modules = {row.module for row in table}
    result: list[Coverage] = []
    for device in devices:
        if not device.is_network:
            continue
        found = sorted({row.module for row in rows if matches_device(row.pattern, device)})
        for transport in TRANSPORTS:
            if transport.module in found:
                found.remove(transport.module)
                if transport.carries in table_modules:
                    found += [transport.module, transport.carries]
        result.append(Coverage(device, tuple(found)))
    return result


# -- the drivers of a site's NICs -----------------------------------------------------------------------

_MAKE_DUMP = "make it on a compute node with `lspci -n > FILE` (or -nn, -nnv)"


def read_lspci(path: Path) -> str:
    """The text of an lspci dump named in a config: a regular file, of a dump's size."""
    try:
        data = read_regular(path, MAX_LSPCI_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read lspci dump {path}: {exc.strerror or exc}",
            hint=f"{_MAKE_DUMP}; a relative path is taken from the config file's directory",
        ) from None
    return data.decode("utf-8", errors="replace")  # -nn names are the ids database's, whatever it holds


def lspci_drivers(kmods: KernelModules, text: str, source: str) -> list[str]:
    """The Ethernet drivers (and their transports) that bind the network devices of an lspci dump, sorted.

    Every NIC of the dump must be bound by one, so that a node boots through whichever port is cabled;
    a dump without any NIC is refused too (the wrong machine's, or not `lspci -n`). With `lspci -n` the
    subsystem ids are unknown and taken as wildcards, so a driver that claims only some subsystems of a
    device comes along as well: the set may be larger than needed, never smaller.
    """
    devices = parse_lspci(text, source)
    coverage = check_devices(devices, nic_table(kmods, ethernet_drivers(kmods)))
    if not coverage:
        raise ConfigError(
            f"lspci dump {source} lists no network device (class 02xx) among its {len(devices)} devices",
            hint=f'{_MAKE_DUMP}, or use drivers = "all" for every Ethernet driver',
        )
    missing = [c.device for c in coverage if not c.covered]
    if missing:
        others = check_devices(missing, nic_table(kmods))  # a Wi-Fi card: a network driver, not one to boot with
        lines = "; ".join(
            f"{c.device.slot} [{c.device.vendor}:{c.device.device}] class {c.device.class_code}"
            + (f" (only {', '.join(c.modules)}, which cannot boot a node)" if c.covered else "")
            for c in others
        )
        raise ConfigError(
            f"lspci dump {source}: no Ethernet driver of kernel {kmods.version} binds {lines}",
            hint=f"`beoboot-build nics --check {source}` shows the coverage; delete the line of a device no node "
            "boots from, or build with a kernel that has its driver",
        )
    return sorted({module for c in coverage for module in c.modules})
