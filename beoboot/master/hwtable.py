"""`bpstat --hardware`: each node's devices with the driver bound to each, and those that have none."""

from __future__ import annotations

from agent import protocol as p
from beoboot.master.printable import printable

NO_DRIVER = "(no driver)"


def device_rows(hardware: p.Hardware) -> list[tuple[str, str, str]]:
    """(device, what it is, its driver or NO_DRIVER): PCI functions, then virtio and SCSI devices. printable: every
    word here is the node's own, and a node may be an impostor writing to the admin's terminal."""
    rows = [
        (d.slot, f"pci {_hex(d.vendor)}:{_hex(d.device)} class {_hex(d.pci_class)}", d.driver or NO_DRIVER)
        for d in hardware.pci
    ]
    rows += [(d.name, d.modalias, d.driver or NO_DRIVER) for d in (*hardware.virtio, *hardware.scsi)]
    return [(printable(a), printable(b), printable(c)) for a, b, c in rows]


def _hex(text: str) -> str:
    return text.removeprefix("0x")


def format_hardware(nodes: p.NodeList) -> str:
    out = []
    for node in nodes.nodes:
        hw = node.hardware
        rows = device_rows(hw)
        without = sum(driver == NO_DRIVER for _, _, driver in rows)
        out.append(
            f"node {node.number} ({printable(node.hostname)}): {hw.cpus} x {printable(hw.cpu_model or 'CPU')}, "
            f"{hw.memory_kib >> 10} MiB; {len(rows)} devices, {without} without a driver"
        )
        width = max((len(name) for name, _, _ in rows), default=0)
        what_width = max((len(what) for _, what, _ in rows), default=0)
        out += [f"  {name:<{width}}  {what:<{what_width}}  {driver}" for name, what, driver in rows]
        out += [
            f"  disk {printable(d.name)}: {_size(d.size_bytes)}{f' ({printable(d.model)})' if d.model else ''}"
            for d in hw.disks
        ]
    return "\n".join(out) + "\n" if out else "no nodes\n"


def _size(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size >> 20} MiB"
