"""A syslinux boot floppy image. Either the payload itself ("kernel": kernel + initrd on the floppy) or,
when that does not fit, a network booster ("network": iPXE, which fetches the kernel and initrd from the
master over HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from tempfile import TemporaryDirectory

from beoboot.artifacts import IPXE_LKRN, BootPayload, atomic_output, render, run_tool
from beoboot.artifacts.esp import FatGeometry, copy_into_fat, format_fat, free_bytes, parse_fat_geometry
from beoboot.errors import BudgetError, ConfigError

CONFIG_ROOM = 1024  # syslinux.cfg, written after the plan
BOOT_SCRIPT = "boot.ipxe"  # the master's iPXE script, beside the kernel and initrd (see pxe.py)


class FloppyMode(StrEnum):
    AUTO = "auto"
    KERNEL = "kernel"
    NETWORK = "network"


class FloppyKind(StrEnum):
    KERNEL = "kernel"
    NETWORK = "network"


@dataclass(frozen=True)
class FloppyResult:
    kind: FloppyKind
    why: str


@dataclass(frozen=True)
class FloppyItem:
    name: str  # name on the floppy
    size: int  # bytes


def plan_floppy(
    mode: FloppyMode, geometry: FatGeometry, free: int, payload: list[FloppyItem], size_kib: int
) -> FloppyResult:
    """Decide which floppy to make. Pure: sizes in, decision out (or BudgetError in "kernel" mode).
    `free` is what the formatted floppy has left once syslinux is on it."""
    if mode is FloppyMode.NETWORK:
        return FloppyResult(FloppyKind.NETWORK, "network mode was asked for")
    room = free - geometry.allocated(CONFIG_ROOM)
    needed = sum(geometry.allocated(item.size) for item in payload)
    if needed <= room:
        return FloppyResult(FloppyKind.KERNEL, f"kernel and initrd fit: {needed:,} of {room:,} bytes")
    listing = ", ".join(f"{item.name} {item.size:,} B" for item in payload)
    fitting = [item.name for item in payload if geometry.allocated(item.size) <= room]
    would_fit = f"only {', '.join(fitting)} would fit alone" if fitting else "none of them fits alone"
    summary = f"{listing}: {needed:,} B needed, {room:,} B free on a {size_kib} KiB floppy after syslinux; {would_fit}"
    if mode is FloppyMode.AUTO:
        return FloppyResult(FloppyKind.NETWORK, f"kernel and initrd do not fit ({summary}): made the network booster")
    raise BudgetError(
        f"boot floppy of {size_kib} KiB is too small for the payload: {summary}",
        hint='use mode "network" (an iPXE booster that fetches the payload over HTTP) or "auto", or a larger size_kib',
    )


def write_floppy(
    payload: BootPayload,
    out: Path,
    *,
    size_kib: int = 1440,
    mode: FloppyMode | str = FloppyMode.AUTO,
    master_url: str,
    mtime: int,
) -> FloppyResult:
    try:
        mode = FloppyMode(mode)
    except ValueError:
        raise ConfigError(f"floppy mode {mode!r} is not one of {', '.join(FloppyMode)}") from None
    with TemporaryDirectory(prefix="beoboot-floppy-") as scratch_dir, atomic_output(out) as tmp:
        scratch = Path(scratch_dir)
        format_fat(tmp, size_kib=size_kib, label="BEOBOOT", serial=mtime, mtime=mtime)
        # syslinux --install writes ldlinux.sys and ldlinux.c32 through mtools, so it honours SOURCE_DATE_EPOCH.
        run_tool(["syslinux", "--install", tmp], mtime=mtime, package="syslinux")
        image = tmp.read_bytes()
        geometry, free = parse_fat_geometry(image[:512]), free_bytes(image)
        items = [
            FloppyItem("vmlinuz", Path(payload.kernel).stat().st_size),
            FloppyItem("initrd.img", Path(payload.initrd).stat().st_size),
        ]
        result = plan_floppy(mode, geometry, free, items, size_kib)
        if result.kind is FloppyKind.KERNEL:
            config = render(
                "floppy-syslinux.cfg.j2", kind=result.kind, kernel="vmlinuz", initrd="initrd.img", append=payload.append
            )
            files = {"vmlinuz": Path(payload.kernel), "initrd.img": Path(payload.initrd)}
        else:
            script_url = f"{master_url.rstrip('/')}/{BOOT_SCRIPT}"
            (scratch / "booster.ipxe").write_text(render("floppy-booster.ipxe.j2", script_url=script_url))
            # iPXE, started as a Linux kernel, runs an iPXE script it is given as its initrd.
            config = render(
                "floppy-syslinux.cfg.j2", kind=result.kind, kernel="ipxe.lkr", initrd="booster.ipx", append=""
            )
            files = {"ipxe.lkr": IPXE_LKRN.require(), "booster.ipx": scratch / "booster.ipxe"}
        (scratch / "syslinux.cfg").write_text(config)
        copy_into_fat(tmp, {**files, "syslinux.cfg": scratch / "syslinux.cfg"}, mtime=mtime)
    return result
