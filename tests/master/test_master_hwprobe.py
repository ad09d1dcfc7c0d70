import pytest

from agent import hwprobe

CPUINFO = """processor\t: 0
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu

processor\t: 1
model name\t: QEMU Virtual CPU version 2.5+
"""


@pytest.mark.parametrize(
    "text, expected",
    [(CPUINFO, ("QEMU Virtual CPU version 2.5+", 2)), ("", ("", 0)), ("processor : 0\n", ("", 1))],
)
def test_parse_cpuinfo(text, expected):
    assert hwprobe.parse_cpuinfo(text) == expected


@pytest.mark.parametrize("text, kib", [("MemTotal:        2030464 kB\nMemFree: 1 kB\n", 2030464), ("", 0)])
def test_parse_meminfo(text, kib):
    assert hwprobe.parse_meminfo(text) == kib


def test_probe_from_a_fake_sysfs(tmp_path):
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "cpuinfo").write_text(CPUINFO)
    (proc / "meminfo").write_text("MemTotal: 1024 kB\n")
    (proc / "uptime").write_text("12.34 20.00\n")
    dev = sys / "bus/pci/devices/0000:00:03.0"
    dev.mkdir(parents=True)
    for name, value in [("vendor", "0x8086"), ("device", "0x100e"), ("class", "0x020000")]:
        (dev / name).write_text(value + "\n")
    (sys / "bus/pci/drivers/e1000").mkdir(parents=True)
    (dev / "driver").symlink_to(sys / "bus/pci/drivers/e1000")
    for name, size in [("vda", "2048"), ("loop0", "8")]:
        (sys / "block" / name).mkdir(parents=True)
        (sys / "block" / name / "size").write_text(size + "\n")
    hw = hwprobe.probe(proc, sys)
    assert (hw.cpus, hw.memory_kib) == (2, 1024)
    assert [(d.slot, d.vendor, d.driver) for d in hw.pci] == [("0000:00:03.0", "0x8086", "e1000")]
    assert [(d.name, d.size_bytes) for d in hw.disks] == [("vda", 1 << 20)]
    assert hwprobe.uptime(proc) == 12.34


def test_probe_reports_modaliases_virtio_devices_and_loaded_modules(tmp_path):
    """What the master matches drivers by: each device's modalias, whether a driver has it, the modules loaded."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "modules").write_text("virtio_net 65536 0 - Live 0x0\nnet_failover 20480 1 virtio_net, Live 0x0\n")
    nvme = sys / "bus/pci/devices/0000:00:04.0"
    nvme.mkdir(parents=True)
    (nvme / "modalias").write_text("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02\n")
    for name, bound in [("virtio10", None), ("virtio2", "virtio_net")]:
        dev = sys / "bus/virtio/devices" / name
        dev.mkdir(parents=True)
        (dev / "modalias").write_text(f"virtio:d0000000{len(name)}v00001AF4\n")
        if bound:
            (sys / "bus/virtio/drivers" / bound).mkdir(parents=True)
            (dev / "driver").symlink_to(sys / "bus/virtio/drivers" / bound)
    hw = hwprobe.probe(proc, sys)
    assert [(d.slot, d.modalias, d.driver) for d in hw.pci] == [
        ("0000:00:04.0", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", None)
    ]
    assert [(d.name, d.modalias, d.driver) for d in hw.virtio] == [
        ("virtio2", "virtio:d00000007v00001AF4", "virtio_net"),
        ("virtio10", "virtio:d00000008v00001AF4", None),
    ]
    assert hw.modules == ("net_failover", "virtio_net")


def test_probe_this_host_does_not_fail():
    hw = hwprobe.probe()
    assert hw.cpus >= 1 and hw.memory_kib > 0


def test_load_from_a_fake_proc(tmp_path):
    (tmp_path / "loadavg").write_text("0.42 0.30 0.10 2/345 6789\n")
    (tmp_path / "meminfo").write_text("MemTotal:        1000 kB\nMemFree:   10 kB\nMemAvailable:     600 kB\n")
    assert hwprobe.load(tmp_path) == hwprobe.Load(0.42, 1000, 600)
    (tmp_path / "meminfo").write_text("MemTotal:        1000 kB\n")  # a kernel before 3.14: no MemAvailable
    assert hwprobe.load(tmp_path) is None
    assert hwprobe.load(tmp_path / "missing") is None
