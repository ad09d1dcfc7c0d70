"""Firmware named by a module's `firmware:` entries: found in the sysroot (plain or .xz) or named as
missing with its Debian package, put in images in a form the kernel reads, and sent by the master."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import pytest

from agent import protocol as p
from beoboot.commands import nics as nics_command
from beoboot.image.filelist import FileList
from beoboot.image.firmwarefiles import add_firmware
from beoboot.master.hwdrivers import DriverPlanner
from beoboot.master.objects import ObjectStore
from beoboot.resolve import firmware
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot

DATA = Path(__file__).parents[1] / "data"
_spec = importlib.util.spec_from_file_location("kmodtree", DATA / "kmodtree.py")
kmodtree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kmodtree)

E1000E = "lib/modules/{v}/" + kmodtree.E1000E_PATH
PLAIN, PACKED, ABSENT = kmodtree.FIRMWARE_PLAIN, kmodtree.FIRMWARE_PACKED, kmodtree.FIRMWARE_ABSENT
PACKED_BYTES = kmodtree.FIRMWARE_PACKED_BYTES
E1000E_DEVICE = "pci:v00008086d000010D3sv00001AF4sd00001100bc02sc00i00"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The fake kernel, whose e1000e asks for three firmware files: one plain, one .xz, one the sysroot lacks."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    return kmodtree.add_firmware(kmodtree.make_tree(tmp_path / "sysroot"))


def kernel_config(root: Path, *options: str) -> None:
    (root / f"boot/config-{kmodtree.VERSION}").write_text("".join(f"{o}=y\n" for o in options))


@pytest.fixture
def kmods(tree: Path) -> KernelModules:
    return KernelModules(Sysroot(tree), kmodtree.VERSION)


def test_firmware_entries_found_or_named_missing_with_their_package(kmods: KernelModules) -> None:
    found = firmware.of_modules(kmods, ["e1000e", "ptp"])
    assert [(f.module, f.name, f.path, f.suffix) for f in found] == [
        ("e1000e", PLAIN, f"/lib/firmware/{PLAIN}", ""),
        ("e1000e", PACKED, f"/lib/firmware/{PACKED}.xz", ".xz"),
        ("e1000e", ABSENT, None, ""),
    ]
    assert found[2].package == "firmware-bnx2x"


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("rtl_nic/rtl8168h-2.fw", "firmware-realtek"),
        ("tigon/tg3_tso5.bin", "firmware-misc-nonfree"),
        ("qed/qed_init_values_zipped-8.59.1.0.bin", "firmware-qlogic"),
        ("intel/ice/ddp/ice.pkg", "firmware-misc-nonfree"),
        ("e100/d101m_ucode.bin", "firmware-misc-nonfree"),
        ("something/else.bin", firmware.UNKNOWN_PACKAGE),
    ],
)
def test_package_for_the_nics_the_issue_names(name: str, package: str) -> None:
    assert firmware.package_for(name) == package


@pytest.mark.parametrize("name", ["/etc/shadow", "../../etc/shadow", "a/../../b", ""])
def test_a_firmware_name_outside_lib_firmware_is_never_looked_up(kmods: KernelModules, name: str) -> None:
    assert firmware.find(kmods.sysroot, name) is None


def test_image_carries_the_firmware_decompressed_when_the_kernel_reads_no_xz(kmods: KernelModules) -> None:
    kernel_config(kmods.sysroot.root, "CONFIG_FW_LOADER_COMPRESS", "CONFIG_FW_LOADER_COMPRESS_ZSTD")
    files = FileList()
    missing = add_firmware(files, kmods, ["pps_core", "ptp", "e1000e"])
    assert [f.name for f in missing] == [ABSENT]
    assert files[f"/lib/firmware/{PLAIN}"].source == str(kmods.sysroot.host(f"/lib/firmware/{PLAIN}"))
    assert files[f"/lib/firmware/{PACKED}"].data == PACKED_BYTES
    assert f"/lib/firmware/{PACKED}.xz" not in files


def test_image_keeps_the_xz_file_when_the_kernel_reads_it(kmods: KernelModules) -> None:
    kernel_config(kmods.sysroot.root, "CONFIG_FW_LOADER_COMPRESS", "CONFIG_FW_LOADER_COMPRESS_XZ")
    files = FileList()
    add_firmware(files, kmods, ["e1000e"])
    assert f"/lib/firmware/{PACKED}.xz" in files and f"/lib/firmware/{PACKED}" not in files


def test_a_sysroot_with_every_file_misses_none(kmods: KernelModules) -> None:
    absent = kmods.sysroot.root / "lib/firmware" / ABSENT
    absent.parent.mkdir(parents=True)
    absent.write_bytes(b"bnx2x")
    assert add_firmware(FileList(), kmods, ["e1000e"]) == []


def run_nics_check(tree: Path, capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    nics_command.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["nics", "--sysroot", str(tree), "--check", str(DATA / "lspci-covered.txt")])
    status = args.func(args)
    return status, capsys.readouterr().out


def test_nics_check_names_the_missing_firmware_and_its_package(tree: Path, capsys) -> None:
    status, out = run_nics_check(tree, capsys)
    assert status == nics_command.EXIT_NOT_COVERED
    assert f"  e1000e: firmware {ABSENT} missing from the sysroot (Debian: firmware-bnx2x)" in out.splitlines()
    assert PLAIN not in out and PACKED not in out


def test_nics_check_passes_once_the_firmware_is_there(tree: Path, capsys) -> None:
    absent = tree / "lib/firmware" / ABSENT
    absent.parent.mkdir(parents=True)
    absent.write_bytes(b"bnx2x")
    status, out = run_nics_check(tree, capsys)
    assert status == 0 and "missing" not in out


def test_the_master_sends_the_driver_of_an_unbound_device_with_its_firmware(tree: Path) -> None:
    """The dependencies first; firmware in a form the node's kernel reads (here no .xz: not sent)."""
    hardware = p.Hardware(
        pci=(
            p.PciDevice("0000:00:03.0", "0x8086", "0x10d3", "0x020000", None, E1000E_DEVICE),
            p.PciDevice("0000:00:04.0", "0x1af4", "0x1000", "0x020000", "virtio-pci", "pci:v00001AF4d00001000sv*"),
        ),
        modules=("virtio_pci",),
    )
    objects = ObjectStore()
    plan = DriverPlanner(str(tree), objects).plan(hardware, kmodtree.VERSION)
    assert [d.name for d in plan] == ["pps_core", "ptp", "e1000e"]
    assert {d.device for d in plan} == {"0000:00:03.0"}
    e1000e = plan[-1]
    assert [f.path for f in e1000e.firmware] == [f"/lib/firmware/{PLAIN}"]
    assert objects.lookup(e1000e.firmware[0].sha256) == str(tree / "lib/firmware" / PLAIN)
    assert objects.lookup(e1000e.module.sha256) == str(tree / E1000E.format(v=kmodtree.VERSION))


def test_the_master_sends_nothing_for_bound_or_loaded_drivers(tree: Path) -> None:
    unbound = p.PciDevice("0000:00:03.0", "0x8086", "0x10d3", "0x020000", None, E1000E_DEVICE)
    planner = DriverPlanner(str(tree), ObjectStore())
    assert planner.plan(p.Hardware(pci=(unbound,), modules=("e1000e",)), kmodtree.VERSION) == ()
    bound = p.PciDevice("0000:00:03.0", "0x8086", "0x10d3", "0x020000", "e1000e", E1000E_DEVICE)
    assert planner.plan(p.Hardware(pci=(bound,)), kmodtree.VERSION) == ()
    assert planner.plan(p.Hardware(pci=(unbound,)), "9.9.9-other") == ()  # a kernel the sysroot lacks
    assert [d.name for d in planner.plan(p.Hardware(pci=(unbound,), modules=("pps_core",)), kmodtree.VERSION)] == [
        "ptp",
        "e1000e",
    ]


def test_inspect_names_the_missing_firmware_of_an_image(tmp_path: Path, capsys) -> None:
    from beoboot.commands import inspect as inspect_command
    from beoboot.image.manifest import Artifact, Manifest

    manifest = Manifest("0", kmodtree.VERSION, 0, [Artifact("image", "stage2", "stage2.cpio.xz", 10, "0" * 64)])
    manifest.missing_firmware["stage2"] = [{"module": "bnx2x", "name": ABSENT, "package": "firmware-bnx2x"}]
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    parser = argparse.ArgumentParser()
    inspect_command.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["inspect", "--summary", str(tmp_path / "stage2.cpio.xz")])
    assert args.func(args) == 0
    line = f"missing firmware: bnx2x asks for {ABSENT}, not in the sysroot (Debian: firmware-bnx2x)"
    assert line in capsys.readouterr().out.splitlines()


def test_installing_missing_firmware_changes_what_the_rebuild_cache_watches(kmods: KernelModules) -> None:
    """The nearest existing directory on the way to each missing file: its listing changes on install."""
    missing = [f for f in firmware.of_modules(kmods, ["e1000e"]) if f.path is None]
    root = kmods.sysroot.root
    assert firmware.watched_directories(kmods.sysroot, missing) == {str(root / "lib/firmware"), str(root)}
    (root / "lib/firmware/bnx2x").mkdir()
    assert str(root / "lib/firmware/bnx2x") in firmware.watched_directories(kmods.sysroot, missing)
