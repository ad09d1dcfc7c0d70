"""Boot artifacts: parsers and plans table-tested; writers checked for reproducible bytes and with
independent tools (xorriso, mdir). The server configs: test_servers.py. QEMU boots: test_media_boot.py.
"""

import io
import os
import shutil
import struct
import subprocess
import time

import pycdlib
import pytest

from beoboot.artifacts import (
    LDLINUX_C32,
    BootPayload,
    write_floppy,
    write_iso,
    write_pxe_tree,
)
from beoboot.artifacts.esp import FatGeometry, fat_directories, free_bytes, parse_fat_geometry
from beoboot.artifacts.floppy import FloppyItem, FloppyKind, FloppyMode, plan_floppy
from beoboot.errors import BudgetError, ConfigError, ImageError

MTIME = 1700000000  # 2023-11-14 22:13:20 UTC
APPEND = "console=ttyS0 panic=-1"

needs_media_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mformat", "mcopy", "syslinux", "grub-mkimage")),
    reason="needs mtools, syslinux and grub-common (python3 build.py setup)",
)


@pytest.fixture
def tiny_payload(tmp_path):
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"K" * 5000)
    initrd.write_bytes(b"I" * 7000)
    return BootPayload(kernel, initrd, APPEND)


# --- parsers and plans ---------------------------------------------------------------------------------


def _boot_sector(bps=512, spc=1, reserved=1, fats=2, root=224, total=2880, fat_sectors=9):
    sector = bytearray(512)
    struct.pack_into("<HBHBHHBHHHII", sector, 11, bps, spc, reserved, fats, root, total, 0xF0, fat_sectors, 18, 2, 0, 0)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@pytest.mark.parametrize(
    "kwargs, clusters, cluster_bytes",
    [
        ({}, 2847, 512),  # 1.44 MB floppy: 2880 - 1 - 18 - 14 sectors
        ({"spc": 2, "root": 240, "total": 5760}, 2863, 1024),  # 2.88 MB floppy: (5760 - 1 - 18 - 15) / 2
        ({"total": 0, "spc": 4}, 0, 2048),
    ],
)
def test_parse_fat_geometry(kwargs, clusters, cluster_bytes):
    geometry = parse_fat_geometry(_boot_sector(**kwargs))
    assert (geometry.data_clusters, geometry.cluster_bytes) == (clusters, cluster_bytes)


@pytest.mark.parametrize("sector", [b"", b"\0" * 512, _boot_sector(bps=0)])
def test_parse_fat_geometry_rejects(sector):
    with pytest.raises(ImageError):
        parse_fat_geometry(sector)


def test_fat_directories_parents_first():
    assert fat_directories(["EFI/BOOT/BOOTX64.EFI", "a.txt", "EFI/x"]) == ["EFI", "EFI/BOOT"]


FLOPPY = FatGeometry(512, 1, 2847, 512)
ITEMS = [FloppyItem("vmlinuz", 600_000), FloppyItem("initrd.img", 500_000)]


@pytest.mark.parametrize(
    "mode, free, kind",
    [
        (FloppyMode.NETWORK, 1_277_440, FloppyKind.NETWORK),
        (FloppyMode.AUTO, 1_277_440, FloppyKind.KERNEL),
        (FloppyMode.KERNEL, 1_277_440, FloppyKind.KERNEL),
        (FloppyMode.AUTO, 900_000, FloppyKind.NETWORK),
    ],
)
def test_plan_floppy(mode, free, kind):
    assert plan_floppy(mode, FLOPPY, free, ITEMS, 1440).kind is kind


def test_plan_floppy_kernel_mode_too_big_lists_sizes_and_what_fits():
    with pytest.raises(BudgetError) as err:
        plan_floppy(FloppyMode.KERNEL, FLOPPY, 900_000, ITEMS, 1440)
    text = str(err.value)
    assert "vmlinuz 600,000 B" in text and "initrd.img 500,000 B" in text
    assert "only vmlinuz, initrd.img would fit alone" in text and "network" in text


def test_payload_rejects_line_break_in_command_line(tiny_payload):
    with pytest.raises(ConfigError, match="line break"):
        BootPayload(tiny_payload.kernel, tiny_payload.initrd, "console=ttyS0\nDEFAULT evil")


# --- writers: reproducible bytes, checked with independent tools -----------------------------------------


@needs_media_tools
def test_iso_is_reproducible_in_any_time_zone(tiny_payload, tmp_path):
    write_iso(tiny_payload, tmp_path / "a.iso", mtime=MTIME)
    old_tz = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "America/New_York"
        time.tzset()
        write_iso(tiny_payload, tmp_path / "b.iso", mtime=MTIME)
    finally:
        os.environ.pop("TZ") if old_tz is None else os.environ.__setitem__("TZ", old_tz)
        time.tzset()
    data = (tmp_path / "a.iso").read_bytes()
    assert data == (tmp_path / "b.iso").read_bytes()
    # Primary volume descriptor (sector 16), creation date at byte 813 (ECMA-119 8.4.26): the pinned mtime, UTC.
    assert data[16 * 2048 + 813 : 16 * 2048 + 813 + 17] == b"2023111422132000\x00"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def iso_data_end(path):
    """Where the ISO's own data ends: the volume space size (PVD, byte 80, ECMA-119 8.4.8) in 2 KiB blocks."""
    with open(path, "rb") as f:
        f.seek(16 * 2048 + 80)
        return int.from_bytes(f.read(4), "little") * 2048


@needs_media_tools
@pytest.mark.parametrize("room", [0, 4096, 16384])  # the data ends on a MiB, or 4 or 16 KiB before one
def test_iso_data_ending_next_to_a_mib_keeps_every_file_whole(tiny_payload, tmp_path, room):
    """The backup GPT goes in the last 33 sectors of the padded image: never over the ISO's own files (it
    once overwrote ldlinux.c32's tail, and the BIOS boot hung with no output)."""
    write_iso(tiny_payload, tmp_path / "probe.iso", mtime=MTIME)
    grow = (1 << 20) - iso_data_end(tmp_path / "probe.iso") % (1 << 20) - room
    tiny_payload.initrd.write_bytes(tiny_payload.initrd.read_bytes() + b"i" * grow)
    write_iso(tiny_payload, tmp_path / "near.iso", mtime=MTIME)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "near.iso"))
    try:
        for rr_path, source in [
            ("/isolinux/ldlinux.c32", LDLINUX_C32.require()),
            ("/boot/initrd.img", tiny_payload.initrd),
            ("/boot/vmlinuz", tiny_payload.kernel),
        ]:
            read = io.BytesIO()
            iso.get_file_from_iso_fp(read, rr_path=rr_path)
            assert read.getvalue() == source.read_bytes(), rr_path
        padded = [child.rock_ridge.name() for child in iso.list_children(rr_path="/beoboot")]
    finally:
        iso.close()
    assert (b"gpt-room.pad" in padded) == (room < 16896)
    assert (tmp_path / "near.iso").stat().st_size - iso_data_end(tmp_path / "near.iso") >= 33 * 512


@needs_media_tools
@pytest.mark.skipif(not shutil.which("xorriso"), reason="needs xorriso")
def test_iso_el_torito_bios_and_uefi(tiny_payload, tmp_path):
    write_iso(tiny_payload, tmp_path / "x.iso", mtime=MTIME)
    # xorriso prints the "Boot record" summary on stderr, the El Torito table on stdout.
    done = subprocess.run(
        ["xorriso", "-indev", str(tmp_path / "x.iso"), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = done.stdout + done.stderr
    assert "MBR isohybrid" in report and "GPT" in report
    assert "/isolinux/isolinux.bin" in report and "/EFI/BOOT/efiboot.img" in report
    assert "  BIOS  y   none" in report and "  UEFI  y   none" in report


@needs_media_tools
def test_floppy_kernel_mode_holds_payload_and_is_reproducible(tiny_payload, tmp_path):
    results = [
        write_floppy(tiny_payload, tmp_path / f"{n}.img", mode="kernel", master_url="http://m", mtime=MTIME)
        for n in "ab"
    ]
    assert results[0].kind is FloppyKind.KERNEL
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    listing = subprocess.run(["mdir", "-a", "-i", str(tmp_path / "a.img"), "::"], capture_output=True, text=True).stdout
    for name in ("ldlinux  sys", "vmlinuz", "initrd   img", "syslinux cfg", "2023-11-14"):
        assert name in listing
    assert free_bytes((tmp_path / "a.img").read_bytes()) < 1_457_664 - 12_000


@needs_media_tools
def test_floppy_auto_makes_network_booster_when_payload_too_big(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"\0" * 2_000_000)
    payload = BootPayload(big, big, APPEND)
    result = write_floppy(payload, tmp_path / "f.img", master_url="http://10.0.0.1:8080/", mtime=MTIME)
    assert result.kind is FloppyKind.NETWORK and "do not fit" in result.why
    script = subprocess.run(
        ["mtype", "-i", str(tmp_path / "f.img"), "::booster.ipx"], capture_output=True, text=True
    ).stdout
    assert script.startswith("#!ipxe") and "chain http://10.0.0.1:8080/boot.ipxe" in script
    with pytest.raises(BudgetError):
        write_floppy(payload, tmp_path / "k.img", mode="kernel", master_url="http://m", mtime=MTIME)
    assert not (tmp_path / "k.img").exists()


@needs_media_tools
def test_pxe_tree_is_complete_and_reproducible(tiny_payload, tmp_path):
    a = write_pxe_tree(tiny_payload, tmp_path / "a", master_url="http://10.0.0.1/", mtime=MTIME)
    b = write_pxe_tree(tiny_payload, tmp_path / "b", master_url="http://10.0.0.1/", mtime=MTIME)
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in a)
    assert names == sorted(
        [
            "boot.ipxe",
            "grub/grub.cfg",
            "grubnetx64.efi",
            "initrd.img",
            "ipxe.efi",
            "ldlinux.c32",
            "pxelinux.0",
            "pxelinux.cfg/default",
            "undionly.kpxe",
            "vmlinuz",
        ]
    )
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes() and pa.stat().st_mtime == MTIME, pa
    script = (tmp_path / "a/boot.ipxe").read_text()
    assert "kernel http://10.0.0.1/vmlinuz initrd=initrd.img console=ttyS0 panic=-1" in script
    assert "APPEND console=ttyS0 panic=-1" in (tmp_path / "a/pxelinux.cfg/default").read_text()


# --- QEMU boots ------------------------------------------------------------------------------------------
# The media boot tests live in test_media_boot.py (every artifact of a real build, through the same
# beoboot/vm/bootvm.py options `beoboot-build boot` uses) and test_dnsmasq_netns.py (real dnsmasq + nginx).
