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
from beoboot.errors import BeobootError, ConfigError, ModuleError, UsageError
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.nics import (
    PciDevice,
    check_devices,
    ethernet_drivers,
    lspci_drivers,
    lspci_dumps,
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


# -- drivers from a site's lspci dump ----------------------------------------------------------------


def test_lspci_dump_selects_the_drivers_of_its_nics_and_their_transport(kmods: KernelModules) -> None:
    text = (DATA / "lspci-covered.txt").read_text()
    assert lspci_drivers(kmods, text, "site.txt") == ["e1000e", "virtio_net", "virtio_pci"]
    # a -nn dump says the same; the host bridge, the VGA and the USB controller bring nothing
    assert lspci_drivers(kmods, "00:03.0 Ethernet controller [0200]: Intel 82574L [8086:10d3]\n", "x") == ["e1000e"]


def test_lspci_item_in_a_driver_list_is_read_from_the_base_directory(kmods: KernelModules, tmp_path: Path) -> None:
    (tmp_path / "rack1.txt").write_text("00:04.0 0200: 1af4:1000\n")
    choice = ["lspci:rack1.txt", "e1000e"]
    assert select_drivers(kmods, choice, tmp_path) == ["e1000e", "virtio_net", "virtio_pci"]
    assert lspci_dumps(choice, tmp_path) == [tmp_path / "rack1.txt"]
    assert lspci_dumps("all", tmp_path) == []


def test_lspci_subsystem_specific_driver_comes_along_when_the_dump_has_no_subsystem(kmods: KernelModules) -> None:
    # r8169_sub claims only Dell's subsystem; `lspci -n` does not say which one the card has
    assert lspci_drivers(kmods, "01:00.0 0200: 10ec:8168\n", "x") == ["r8169_sub"]
    verbose = "01:00.0 Ethernet controller [0200]: Realtek [10ec:8168]\n\tSubsystem: Dell [1028:0001]\n"
    assert lspci_drivers(kmods, verbose, "x") == ["r8169_sub"]
    other = "01:00.0 Ethernet controller [0200]: Realtek [10ec:8168]\n\tSubsystem: ASUS [1043:0001]\n"
    with pytest.raises(ConfigError, match="no Ethernet driver"):
        lspci_drivers(kmods, other, "x")


def test_lspci_dump_without_a_nic_is_refused(kmods: KernelModules) -> None:
    with pytest.raises(ConfigError, match=r"site.txt lists no network device \(class 02xx\) among its 2") as err:
        lspci_drivers(kmods, "00:00.0 0600: 8086:1237\n00:1d.7 0c03: 8086:293a (prog-if 20)\n", "site.txt")
    assert "lspci -n" in (err.value.hint or "")


def test_lspci_nic_without_an_ethernet_driver_is_named(kmods: KernelModules) -> None:
    text = (DATA / "lspci-uncovered.txt").read_text() + "02:00.0 0280: 8086:2723\n"
    with pytest.raises(ConfigError) as err:
        lspci_drivers(kmods, text, "site.txt")
    message = str(err.value)
    assert "site.txt" in message and kmodtree.VERSION in message
    assert "0000:01:00.0 [15b3:1017] class 0200" in message  # no driver at all
    assert "02:00.0 [8086:2723] class 0280 (only iwlwifi, which cannot boot a node)" in message  # Wi-Fi
    assert "0000:00:03.0" not in message  # e1000e binds that one
    assert "delete the line" in (err.value.hint or "")


def test_missing_lspci_dump_is_a_config_error_naming_the_file(kmods: KernelModules, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read lspci dump {tmp_path}/gone.txt") as err:
        select_drivers(kmods, "lspci:gone.txt", tmp_path)
    assert "lspci -n > FILE" in (err.value.hint or "")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        select_drivers(kmods, ["lspci:dir.txt"], tmp_path)


def test_lspci_dump_of_another_tool_is_refused_with_its_line(kmods: KernelModules, tmp_path: Path) -> None:
    (tmp_path / "site.txt").write_text("00:03.0 Ethernet controller: Intel Corporation 82540EM\n")
    with pytest.raises(UsageError, match=r"site.txt:1: not an `lspci -n` line"):
        select_drivers(kmods, "lspci:site.txt", tmp_path)


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
