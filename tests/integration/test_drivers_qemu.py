"""Drivers for a node's hardware, from the master: a QEMU node (TCG) with an NVMe disk and a SATA disk on q35's
AHCI controller, whose drivers stage 3 does not carry, registers; the master answers with nvme and ahci and
their dependencies from the kernel's own tables (modules.alias, modules.dep), the node fetches them by hash
and loads them; the SATA disk then appears on the SCSI bus, and the node asks again, for sd_mod. A job sees
both disks."""

import re
import subprocess
import time

import pytest
from master_helpers import bpsh_argv, shared_port
from nodes import bpstat, node_row, node_up

from beoboot import config
from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot

pytestmark = pytest.mark.integration

DISK_MIB = 64
SATA_MIB = 32
NVME_CLASS = "0x010802"  # mass storage, non-volatile memory, NVM Express


@pytest.fixture(scope="module")
def node(shared_out, tmp_path_factory):
    work = tmp_path_factory.mktemp("qemu-drivers")
    disk = work / "nvme.img"
    with open(disk, "wb") as f:
        f.truncate(DISK_MIB << 20)
    sata = work / "sata.img"
    with open(sata, "wb") as f:
        f.truncate(SATA_MIB << 20)
    nvme = ["-drive", f"file={disk},if=none,id=d,format=raw", "-device", "nvme,drive=d,serial=beoboot1"]
    ahci = ["-drive", f"file={sata},if=none,id=s,format=raw", "-device", "ide-hd,drive=s,bus=ide.0"]
    with node_up(shared_out, shared_port(), work, extra=[*nvme, *ahci]) as (master, vm):
        master.vm = vm  # its console, for what the node said
        yield master


def test_nvme_is_a_module_that_stage3_does_not_carry(shared_out):
    """The premise: were nvme built in or in stage 3's modules, the master would have nothing to send."""
    build = config.load()
    kmods = KernelModules.latest(Sysroot(build.sysroot))
    stage3 = build.images["stage3"]
    for module in ("nvme", "ahci", "sd_mod"):
        assert not kmods.is_builtin(module) and module in kmods.module_names()
        assert module not in stage3.modules
    assert not stage3.drivers


def test_the_master_sends_nvme_and_its_dependencies_in_order(node):
    first = node.wait_for_log(r"node 0: sending drivers (.*)", timeout=5)
    sent = first[1].split()
    assert "nvme" in sent and "nvme_core" in sent and sent.index("nvme_core") < sent.index("nvme")
    assert "ahci" in sent and sent.index("libata") < sent.index("ahci")
    # the second round: the SATA disk ahci found, on the SCSI bus
    then = node.wait_for_log(r"node 0: sending drivers (.*)", timeout=5, after=first.end())[1].split()
    assert "sd_mod" in then
    rounds = re.findall(r"beoboot: drivers from the master loaded: (.*) \(", node.vm.console())
    assert "nvme" in rounds[0].split() and "sd_mod" in rounds[1].split(), rounds
    assert "cannot load driver" not in node.vm.console()


def test_a_job_sees_the_nvme_disk(node):
    result = subprocess.run(
        bpsh_argv(node.bpsh_socket, "0", "cat", "/proc/partitions"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    sizes = {line.split()[3]: int(line.split()[2]) for line in result.stdout.splitlines()[2:] if line.split()}
    assert sizes.get("nvme0n1") == DISK_MIB << 10, result.stdout  # /proc/partitions counts 1 KiB blocks
    assert sizes.get("sda") == SATA_MIB << 10, result.stdout


def test_bpstat_hardware_shows_the_nvme_controller_with_its_driver(node):
    """The node reports what it bound once the drivers are loaded, with its next heartbeat."""
    deadline = time.monotonic() + 30
    while True:
        pci = node_row(node, 0)["hardware"]["pci"]
        nvme = [d for d in pci if d["pci_class"] == NVME_CLASS]
        if nvme and nvme[0]["driver"] == "nvme":
            break
        assert time.monotonic() < deadline, pci
        time.sleep(1)
    table = bpstat(node, "--hardware", "0")
    line = next(line for line in table.splitlines() if nvme[0]["slot"] in line)
    assert line.split()[-1] == "nvme" and "class 010802" in line, table
    assert any(line.split()[-1] == "sd" and "scsi:t-0x00" in line for line in table.splitlines()), table
    assert "without a driver" in table.splitlines()[0]
