"""The NIC table, driver selection, lspci parsing and the `nics`/`modules` commands, on the fake tree."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from agent.config import NicAlias
from beoboot.commands import modules as modules_command
from beoboot.commands import nics as nics_command
from beoboot.errors import BeobootError, ModuleError, UsageError
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.nics import (
    PciDevice,
    check_devices,
    ethernet_drivers,
    match,
    matches_device,
    network_drivers,
    nic_table,
    parse_lspci,
    select_drivers,
)
from beoboot.resolve.sysroot import Sysroot

DATA = Path(__file__).parents[1] / "data"
_spec = importlib.util.spec_from_file_location("kmodtree", DATA / "kmodtree.py")
kmodtree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kmodtree)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    return kmodtree.make_tree(tmp_path)


@pytest.fixture
def kmods(tree: Path) -> KernelModules:
    return KernelModules(Sysroot(tree), kmodtree.VERSION)


def test_network_drivers_are_modules_under_drivers_net_with_pci_or_virtio_aliases(kmods: KernelModules) -> None:
    assert network_drivers(kmods) == ["e1000e", "iwlwifi", "r8169_sub", "virtio_net"]
    assert ethernet_drivers(kmods) == ["e1000e", "r8169_sub", "virtio_net"]


def test_nic_table_is_sorted_and_brings_the_virtio_transport(kmods: KernelModules) -> None:
    table = nic_table(kmods)
    assert table == sorted(table, key=lambda r: (r.pattern, r.module))
    assert NicAlias("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci") in table
    assert NicAlias("virtio:d00000001v*", "virtio_net") in table
    assert len(table) == len(set(table)) == 5  # the duplicate e1000e line of modules.alias counts once
    assert {r.module for r in nic_table(kmods, ["e1000e"])} == {"e1000e"}


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("all", ["e1000e", "r8169_sub", "virtio_net"]),
        (["e1000*"], ["e1000e"]),
        (["virtio-net", "iwl*"], ["iwlwifi", "virtio_net"]),
        (["ext4"], ["ext4"]),  # a plain module name is taken even if it is not a NIC driver
    ],
)
def test_select_drivers(kmods: KernelModules, choice, expected: list[str]) -> None:
    assert select_drivers(kmods, choice) == expected


@pytest.mark.parametrize("choice", [["nope"], ["ixgbe*"], ["e1000e", "bogus"]])
def test_select_unknown_driver_is_module_error(kmods: KernelModules, choice: list[str]) -> None:
    with pytest.raises(ModuleError, match="matches no network driver"):
        select_drivers(kmods, choice)


def test_match_is_fnmatch_and_case_sensitive() -> None:
    table = [
        NicAlias("pci:v00008086d000010D3sv*sd*bc*sc*i*", "e1000e"),
        NicAlias("pci:v*d*sv*sd*bc02sc00i*", "generic"),
    ]
    assert match("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00", table) == ["e1000e", "generic"]
    assert match("pci:v00008086d000010d3sv00008086sd0000A01Fbc03sc00i00", table) == []


@pytest.mark.parametrize(
    "line, expected",
    [
        ("00:03.0 0200: 8086:100e (rev 03)", PciDevice("00:03.0", "0200", "8086", "100e")),
        ("0000:3b:00.1 0200: 15B3:1017", PciDevice("0000:3b:00.1", "0200", "15b3", "1017")),
        ("00:1d.7 0c03: 8086:293a (rev 02) (prog-if 20)", PciDevice("00:1d.7", "0c03", "8086", "293a", "20")),
        (
            "00:03.0 Ethernet controller [0200]: Intel Corporation 82540EM Gigabit Ethernet Controller [8086:100e] (rev 03)",
            PciDevice("00:03.0", "0200", "8086", "100e"),
        ),
        (
            "00:1d.7 USB controller [0c03]: Intel Corporation 82801I (ICH9 Family) USB2 EHCI Controller #1 [8086:293a]"
            " (rev 02) (prog-if 20 [EHCI])",
            PciDevice("00:1d.7", "0c03", "8086", "293a", "20"),
        ),
    ],
)
def test_parse_lspci_lines(line: str, expected: PciDevice) -> None:
    assert parse_lspci(line) == [expected]


def test_parse_lspci_verbose_takes_subsystem() -> None:
    text = (
        "00:03.0 Ethernet controller [0200]: Red Hat, Inc. Virtio network device [1af4:1000]\n"
        "\tSubsystem: Red Hat, Inc. Device [1af4:0001]\n\tFlags: bus master\n"
    )
    (device,) = parse_lspci(text)
    assert device.modalias() == "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"


def test_parse_lspci_rejects_non_numeric_dump() -> None:
    with pytest.raises(UsageError, match=r"dump.txt:2: not an `lspci -n` line"):
        parse_lspci("00:03.0 0200: 8086:100e\n00:04.0 Ethernet controller: Intel Corporation 82540EM\n", "dump.txt")


def test_unknown_subsystem_is_a_wildcard() -> None:
    pattern = "pci:v000010ECd00008168sv00001028sd*bc*sc*i*"
    assert matches_device(pattern, PciDevice("01:00.0", "0200", "10ec", "8168"))
    assert matches_device(pattern, PciDevice("01:00.0", "0200", "10ec", "8168", subvendor="1028", subdevice="0001"))
    assert not matches_device(pattern, PciDevice("01:00.0", "0200", "10ec", "8168", subvendor="1043", subdevice="0001"))
    assert not matches_device(pattern, PciDevice("01:00.0", "0200", "10ec", "8169"))


def test_check_devices_covered(kmods: KernelModules) -> None:
    devices = parse_lspci((DATA / "lspci-covered.txt").read_text())
    coverage = check_devices(devices, nic_table(kmods, select_drivers(kmods, "all")))
    assert [(c.device.slot, c.modules) for c in coverage] == [
        ("00:03.0", ("e1000e",)),
        ("00:04.0", ("virtio_pci", "virtio_net")),
    ]


def test_virtio_transport_alone_does_not_cover(kmods: KernelModules) -> None:
    (coverage,) = check_devices([PciDevice("00:04.0", "0200", "1af4", "1000")], nic_table(kmods, ["virtio_pci"]))
    assert not coverage.covered


# -- the commands -------------------------------------------------------------------------------------


def run_command(argv: list[str], capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    modules_command.register(sub)
    nics_command.register(sub)
    args = parser.parse_args(argv)
    status = args.func(args)
    return status, capsys.readouterr().out


def test_nics_check_covered(tree: Path, capsys) -> None:
    status, out = run_command(["nics", "--sysroot", str(tree), "--check", str(DATA / "lspci-covered.txt")], capsys)
    assert status == 0
    assert out.splitlines() == ["00:03.0 0200: 8086:10d3  e1000e", "00:04.0 0200: 1af4:1000  virtio_pci + virtio_net"]


def test_nics_check_uncovered_exits_nonzero(tree: Path, capsys) -> None:
    argv = [
        "nics",
        "--sysroot",
        str(tree),
        "--kernel",
        kmodtree.VERSION,
        "--json",
        "--check",
        str(DATA / "lspci-uncovered.txt"),
    ]
    status, out = run_command(argv, capsys)
    assert status == nics_command.EXIT_NOT_COVERED
    rows = json.loads(out)
    assert [(r["slot"], r["covered"], r["modules"]) for r in rows] == [
        ("0000:00:03.0", True, ["e1000e"]),
        ("0000:01:00.0", False, []),
    ]


def test_nics_lists_table(tree: Path, capsys) -> None:
    status, out = run_command(["nics", "--sysroot", str(tree), "--drivers", "e1000*", "virtio_net"], capsys)
    assert status == 0
    assert out.splitlines() == [
        "pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci",
        "pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e",
        "virtio:d00000001v* virtio_net",
    ]


def test_nics_missing_dump_is_usage_error(tree: Path, capsys) -> None:
    with pytest.raises(UsageError, match="cannot read lspci dump"):
        run_command(["nics", "--sysroot", str(tree), "--check", str(tree / "nope.txt")], capsys)


def test_modules_command_prints_paths_in_load_order(tree: Path, capsys) -> None:
    status, out = run_command(["modules", "--sysroot", str(tree), "e1000e"], capsys)
    base = f"/lib/modules/{kmodtree.VERSION}/kernel/drivers"
    assert (status, out.splitlines()) == (
        0,
        [f"{base}/pps/pps_core.ko", f"{base}/ptp/ptp.ko", f"{base}/net/ethernet/intel/e1000e/e1000e.ko"],
    )
    status, out = run_command(["modules", "--sysroot", str(tree), "--json", "virtio_net"], capsys)
    assert [m["name"] for m in json.loads(out)["modules"]] == ["virtio", "failover", "net_failover", "virtio_net"]


def test_modules_command_unknown_name(tree: Path, capsys) -> None:
    with pytest.raises(BeobootError, match="'e1000x'"):
        run_command(["modules", "--sysroot", str(tree), "e1000x"], capsys)
