"""stage3.drivers: firmware goes only under /lib/firmware, by a temporary name then a rename; the buses
settle before the node asks for the drivers of devices that appeared."""

from __future__ import annotations

import threading
import time

import pytest

from stage3 import drivers


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/lib/firmware/../../etc/shadow",
        "lib/firmware/x",
        "/lib/firmware",
        "/lib/firmware//x",
        "/lib/firmwarex/y",
    ],
)
def test_a_firmware_path_outside_lib_firmware_is_refused(path, tmp_path):
    with pytest.raises(drivers.DriverError, match="not a plain path under /lib/firmware"):
        drivers.firmware_target(path, str(tmp_path))


def test_firmware_is_placed_whole_under_the_root(tmp_path):
    source = tmp_path / "object"
    source.write_bytes(b"fw")
    target = drivers.firmware_target("/lib/firmware/rtl_nic/rtl8168h-2.fw", str(tmp_path / "root"))
    assert target == str(tmp_path / "root/lib/firmware/rtl_nic/rtl8168h-2.fw")
    drivers.place_firmware(str(source), target)
    assert (tmp_path / "root/lib/firmware/rtl_nic/rtl8168h-2.fw").read_bytes() == b"fw"
    assert sorted(p.name for p in (tmp_path / "root/lib/firmware/rtl_nic").iterdir()) == ["rtl8168h-2.fw"]


def test_no_drivers_is_no_work(tmp_path):
    assert drivers.load([], "http://127.0.0.1:9/", print, token=lambda: "", dry_run=False, root=str(tmp_path)) == []
    assert not (tmp_path / "run").exists()


def test_settle_waits_until_a_device_that_appears_has_been_still(tmp_path):
    """A SATA disk shows up on the SCSI bus a moment after ahci loads: settle() sees it, bound or not."""
    disk = tmp_path / "bus/scsi/devices/0:0:0:0"

    def appear():
        time.sleep(0.4)
        disk.mkdir(parents=True)
        (disk / "modalias").write_text("scsi:t-0x00\n")

    thread = threading.Thread(target=appear)
    started = time.monotonic()
    thread.start()
    hardware = drivers.settle(settle=0.6, wait=5, sys_root=str(tmp_path))
    thread.join()
    assert [(d.name, d.modalias, d.driver) for d in hardware.scsi] == [("0:0:0:0", "scsi:t-0x00", None)]
    assert hardware.unbound() == [("0:0:0:0", "scsi:t-0x00")]
    assert 1.0 <= time.monotonic() - started < 4


def test_settle_gives_up_after_its_bound(tmp_path):
    started = time.monotonic()
    drivers.settle(settle=10, wait=0.5, sys_root=str(tmp_path))
    assert time.monotonic() - started < 2
