"""FAT images (the EFI system partition inside the ISO, boot floppies) made with mtools, and GRUB EFI
binaries made with grub-mkimage. Both tools are reproducible: mtools stamps files with SOURCE_DATE_EPOCH
and takes a fixed volume serial; grub-mkimage writes no date."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from beoboot.artifacts import GRUB_EFI_MODULES, atomic_output, run_tool
from beoboot.errors import ImageError

SECTOR = 512
# One "cylinder" of the geometry given to mformat (64 heads x 32 sectors): mformat wants whole cylinders.
CYLINDER_SECTORS = 64 * 32
# Sizes mformat knows by name (-f), with the geometry PC floppy drives expect.
FLOPPY_SIZES_KIB = (720, 1440, 2880)

# Modules every beoboot GRUB image carries. `search_fs_file` finds the medium by a marker file,
# `iso9660` + `part_*` read the CD and the same ISO written to a USB stick, `serial`/`terminal` mirror
# the menu on ttyS0 for headless nodes.
GRUB_COMMON_MODULES = (
    "normal",
    "configfile",
    "echo",
    "linux",
    "search",
    "search_fs_file",
    "serial",
    "terminal",
    "test",
    "sleep",
    "efi_gop",
    "all_video",
    "fat",
    "part_gpt",
    "part_msdos",
)
GRUB_CD_MODULES = ("iso9660",)
GRUB_NET_MODULES = ("efinet", "net", "tftp", "http")


@dataclass(frozen=True)
class FatGeometry:
    """What a FAT boot sector (BIOS parameter block) says about room for files."""

    bytes_per_sector: int
    sectors_per_cluster: int
    data_clusters: int
    fat_offset: int  # byte offset of the first FAT

    @property
    def fat_bits(self) -> int:
        # The FAT type follows from the cluster count alone (Microsoft FAT spec, section 3.5).
        return 12 if self.data_clusters < 4085 else 16 if self.data_clusters < 65525 else 32

    @property
    def cluster_bytes(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def data_bytes(self) -> int:
        return self.data_clusters * self.cluster_bytes

    def allocated(self, size: int) -> int:
        """Bytes a file of `size` bytes takes: whole clusters."""
        return math.ceil(size / self.cluster_bytes) * self.cluster_bytes


def parse_fat_geometry(boot_sector: bytes) -> FatGeometry:
    """Read the BIOS parameter block of a FAT12/16/32 boot sector (Microsoft FAT spec, section 3)."""
    if len(boot_sector) < 512 or boot_sector[510:512] != b"\x55\xaa":
        raise ImageError("not a FAT boot sector: shorter than 512 bytes or no 55AA signature")
    (bps, spc, reserved, fats, root_entries, total16, _media, fat16, _spt, _heads, _hidden, total32) = (
        struct.unpack_from("<HBHBHHBHHHII", boot_sector, 11)
    )
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or fats == 0:
        raise ImageError(f"not a FAT boot sector: {bps} bytes per sector, {spc} sectors per cluster, {fats} FATs")
    fat_sectors = fat16 or struct.unpack_from("<I", boot_sector, 36)[0]
    total = total16 or total32
    root_sectors = math.ceil(root_entries * 32 / bps)
    data_sectors = total - reserved - fats * fat_sectors - root_sectors
    return FatGeometry(bps, spc, max(data_sectors // spc, 0), reserved * bps)


def free_bytes(image: bytes) -> int:
    """Bytes the FAT of `image` marks free, in whole clusters."""
    geometry = parse_fat_geometry(image[:512])
    fat = image[geometry.fat_offset :]
    free = 0
    for cluster in range(2, geometry.data_clusters + 2):
        if geometry.fat_bits == 12:
            pair = int.from_bytes(fat[cluster * 3 // 2 : cluster * 3 // 2 + 2], "little")
            entry = pair >> 4 if cluster & 1 else pair & 0xFFF
        else:
            width = geometry.fat_bits // 8
            entry = int.from_bytes(fat[cluster * width : cluster * width + width], "little") & 0x0FFFFFFF
        free += entry == 0
    return free * geometry.cluster_bytes


def fat_directories(paths: Sequence[str]) -> list[str]:
    """Every parent directory of `paths`, parents first: mmd makes one level at a time."""
    dirs = {str(parent) for p in paths for parent in PurePosixPath(p).parents if str(parent) not in (".", "/")}
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def esp_size_kib(sizes: Sequence[int]) -> int:
    """A FAT size with room for files of `sizes`: each file rounded to 4 KiB, 25% slack, whole MiB."""
    payload = sum(math.ceil(s / 4096) * 4096 for s in sizes)
    return max(1, math.ceil(payload * 1.25 / (1 << 20)) + 1) * 1024


def format_fat(out: Path, *, size_kib: int, label: str, serial: int, mtime: int) -> None:
    """Make an empty FAT file system in the file `out` (created or overwritten)."""
    out.unlink(missing_ok=True)
    common: list[str | Path] = ["-i", out, "-N", f"{serial & 0xFFFFFFFF:08X}", "-v", label[:11]]
    if size_kib in FLOPPY_SIZES_KIB:
        run_tool(["mformat", "-C", "-f", str(size_kib), *common, "::"], mtime=mtime, package="mtools")
        return
    sectors = math.ceil(size_kib * 1024 / SECTOR / CYLINDER_SECTORS) * CYLINDER_SECTORS
    run_tool(
        ["mformat", "-C", "-T", str(sectors), "-h", "64", "-s", "32", *common, "::"], mtime=mtime, package="mtools"
    )


def copy_into_fat(image: Path, files: Mapping[str, Path], *, mtime: int) -> None:
    """Copy `files` (FAT path -> source) into `image`, directories first, in sorted order."""
    for directory in fat_directories(list(files)):
        run_tool(["mmd", "-i", image, f"::/{directory}"], mtime=mtime, package="mtools")
    for dest in sorted(files):
        # No -m: the file gets SOURCE_DATE_EPOCH, not the source's own mtime.
        run_tool(["mcopy", "-o", "-i", image, files[dest], f"::/{dest}"], mtime=mtime, package="mtools")


def write_fat_image(
    files: Mapping[str, Path], out: Path, *, mtime: int, label: str, size_kib: int | None = None
) -> Path:
    """A FAT image holding `files`; its size fits them unless `size_kib` is given."""
    if size_kib is None:
        size_kib = esp_size_kib([Path(src).stat().st_size for src in files.values()])
    with atomic_output(out) as tmp:
        format_fat(tmp, size_kib=size_kib, label=label, serial=mtime, mtime=mtime)
        copy_into_fat(tmp, files, mtime=mtime)
    return out


def write_grub_efi(out: Path, *, embedded_config: str, prefix: str, modules: Sequence[str]) -> Path:
    """A standalone GRUB EFI binary (x86_64) whose first commands are `embedded_config`."""
    GRUB_EFI_MODULES.require()
    with atomic_output(out) as tmp:
        config = tmp.with_name(tmp.name + ".cfg")
        config.write_text(embedded_config)
        try:
            run_tool(
                ["grub-mkimage", "-O", "x86_64-efi", "-o", tmp, "-c", config, "-p", prefix, *modules],
                mtime=0,
                package="grub-common grub-efi-amd64-bin",
            )
        finally:
            config.unlink(missing_ok=True)
    return out
