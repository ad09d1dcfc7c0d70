"""Drivers from the master, without QEMU: the real beoserv (drivers_sysroot = a fake kernel tree) answers a
registration whose device has no driver with its modules and firmware; stage 3's code (stage3.drivers)
fetches them by hash with the registration's token, places the firmware and loads the modules in order
(through a loader that records, as no kernel module can be loaded here); the next heartbeat reports the
bound device, which bpstat --hardware shows."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import requests
from master_helpers import MasterProcess, publish_files
from nodes import bpstat, node_row

from agent import protocol as p
from agent.masterlink import MasterLink
from stage3 import drivers

DATA = Path(__file__).parents[1] / "data"
_spec = importlib.util.spec_from_file_location("kmodtree", DATA / "kmodtree.py")
kmodtree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kmodtree)

SLOT = "0000:00:03.0"
E1000E_DEVICE = "pci:v00008086d000010D3sv00001AF4sd00001100bc02sc00i00"


def device(driver: str | None) -> p.PciDevice:
    return p.PciDevice(SLOT, "0x8086", "0x10d3", "0x020000", driver, E1000E_DEVICE)


@pytest.fixture
def master(tmp_path):
    if shutil.which("zstd") is None:
        pytest.skip("zstd program not installed")
    tree = kmodtree.add_firmware(kmodtree.make_tree(tmp_path / "sysroot"))
    root = tmp_path / "boot"
    publish_files(root, {"vmlinuz": b"kernel"})
    config = tmp_path / "beoserv.toml"
    config.write_text(f'drivers_sysroot = "{tree}"\nheartbeat_interval = 0.2\n')
    server = MasterProcess(root, tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    server.tree = tree
    yield server
    server.stop()


def node(master, mac: str, stage: str = "stage3") -> MasterLink:
    link = MasterLink(master.url, mac, stage, timeout=5)
    link.booted = p.Booted(kmodtree.VERSION)
    return link


def test_a_node_gets_loads_and_reports_the_driver_of_its_unbound_device(master, tmp_path):
    link = node(master, "52:54:00:00:07:01")
    reply = link.register(p.Hardware(pci=(device(None),), modules=("virtio_pci",)))
    assert [d.name for d in reply.drivers] == ["pps_core", "ptp", "e1000e"]

    loaded: list[bytes] = []
    said: list[str] = []
    names = drivers.load(
        reply.drivers,
        master.url,
        lambda line, *level: said.append(line),
        token=lambda: reply.link_token,
        dry_run=False,
        root=str(tmp_path / "node"),
        loader=lambda path, compressed: loaded.append(Path(path).read_bytes()) is None,
    )
    assert names == ["pps_core", "ptp", "e1000e"], said
    moddir = master.tree / "lib/modules" / kmodtree.VERSION
    e1000e = (moddir / kmodtree.E1000E_PATH).read_bytes()
    assert loaded[-1] == e1000e and len(loaded) == 3
    placed = tmp_path / "node/lib/firmware" / kmodtree.FIRMWARE_PLAIN
    assert placed.read_bytes() == kmodtree.FIRMWARE_PLAIN_BYTES
    assert "drivers from the master loaded: pps_core ptp e1000e (1 firmware files)" in said[-1]

    link.report_hardware(p.Hardware(pci=(device("e1000e"),)))
    assert link.heartbeat() is not None
    assert node_row(master, 0)["hardware"]["pci"][0]["driver"] == "e1000e"
    assert f"{SLOT}  pci 8086:10d3 class 020000  e1000e" in bpstat(master, "--hardware", "0")


def test_only_the_node_sent_a_driver_may_fetch_it(master):
    first = node(master, "52:54:00:00:07:01").register(p.Hardware(pci=(device(None),)))
    other = node(master, "52:54:00:00:07:02").register(p.Hardware(pci=(device("e1000e"),)))
    assert other.drivers == ()
    url = master.url.rstrip("/") + p.OBJECTS_PATH.format(digest=first.drivers[-1].module.sha256)
    assert requests.get(url, headers={p.LINK_TOKEN_HEADER: first.link_token}, timeout=5).status_code == 200
    assert requests.get(url, headers={p.LINK_TOKEN_HEADER: other.link_token}, timeout=5).status_code == 403
    assert requests.get(url, timeout=5).status_code == 403


def test_bpstat_hardware_lists_a_device_without_a_driver(master):
    node(master, "52:54:00:00:07:03").register(p.Hardware(pci=(device(None),)))
    table = bpstat(master, "--hardware", "0")
    assert "1 devices, 1 without a driver" in table.splitlines()[0]
    assert table.splitlines()[1].endswith("(no driver)")


def test_stage_2_gets_no_drivers_stage_3_does(master):
    """Stage 2 carries its own NIC drivers and leaves the kernel to stage 3, which loads what it is sent."""
    assert node(master, "52:54:00:00:07:04", "stage2").register(p.Hardware(pci=(device(None),))).drivers == ()
    assert node(master, "52:54:00:00:07:04").register(p.Hardware(pci=(device(None),))).drivers != ()


def test_a_node_asks_again_for_devices_that_appeared_and_may_fetch_both(master):
    """A SATA controller's disks appear once ahci is loaded: the node asks for theirs (DRIVERS_PATH)."""
    link = node(master, "52:54:00:00:07:05")
    reply = link.register(
        p.Hardware(pci=(device("e1000e"),), virtio=(p.BusDevice("virtio0", "virtio:d00000001v00001AF4"),))
    )
    assert [d.name for d in reply.drivers][-1] == "virtio_net"
    later = link.drivers(p.Hardware(pci=(device(None),)))
    assert [d.name for d in later] == ["pps_core", "ptp", "e1000e"]
    for sent in (reply.drivers[-1], later[-1]):  # the second grant adds to the first
        url = master.url.rstrip("/") + p.OBJECTS_PATH.format(digest=sent.module.sha256)
        assert requests.get(url, headers={p.LINK_TOKEN_HEADER: reply.link_token}, timeout=5).status_code == 200
    stranger = MasterLink(master.url, "52:54:00:00:07:05", "stage3", timeout=5)  # no token: not registered
    assert stranger.drivers(p.Hardware(pci=(device(None),))) == ()
