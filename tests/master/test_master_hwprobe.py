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
