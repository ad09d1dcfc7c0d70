"""stage3.drivers: firmware goes only under /lib/firmware, by a temporary name then a rename."""

from __future__ import annotations

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
