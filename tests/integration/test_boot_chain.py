"""The boot chain end to end under QEMU (TCG) with the real master: bare node -> supervised node `up`.

Every node reaches the master on the host at 10.0.2.2 (QEMU user networking) on this module's port.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from master_helpers import MasterProcess, bpsh_argv, build_for_master, running_job
from nodes import bpstat, node_row, stage2_node
from servers import free_port
from vm import BackgroundVM

from beoboot.vm import qemu

pytestmark = pytest.mark.integration

MASTER_TIMEOUT = 6  # seconds: short, so the master-loss test is quick


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def out(tmp_path_factory, port):
    return build_for_master(tmp_path_factory, port, f"master_timeout = {MASTER_TIMEOUT}\n")


@pytest.fixture
def master(out, port, tmp_path):
    server = MasterProcess(out, tmp_path / "nodes.db", tmp_path / "beoserv.log", port=port)
    yield server
    server.stop()


def test_iso_boots_stage1_which_kexecs_into_stage2_then_stage3(out, master, tmp_path):
    master.start()
    cmd = qemu.qemu_command(extra=["-cdrom", str(out / "beoboot.iso"), "-nic", "user,model=e1000"])
    with BackgroundVM(cmd, tmp_path / "iso.console") as node:
        first = node.wait_for(
            r"beoboot: stage 1 agent up\nbeoboot: agent version \S+\nbeoboot: kernel \S+, up ([\d.]+) s"
        )
        kexec = node.wait_for(r"kexec into the stage 2 kernel at uptime ([\d.]+) s", after=first.end())
        node.wait_for("kexec_file_load", after=kexec.end())
        second = node.wait_for(
            r"beoboot: stage 2 agent up\nbeoboot: agent version \S+\nbeoboot: kernel \S+, up ([\d.]+) s",
            after=first.end(),
        )
        # a fresh kernel: its uptime started again (one kernel's uptime only grows)
        assert float(second.group(1)) < float(kexec.group(1)), (second.group(0), kexec.group(0))
        node.wait_for("beoboot: stage 3 ready: node 0 up", after=second.end())
        assert node_row(master, 0)["state"] == "up"
        timeline = bpstat(master, "--timeline", "0")
        assert "stage1_start" in timeline and "kexec" in timeline and "stage3_ready" in timeline


def test_stage3_altered_by_one_byte_is_refused(out, port, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(out, altered, symlinks=True)  # the image is changed through its link
    image = altered / "stage3.cpio.gz"
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    server = MasterProcess(altered, tmp_path / "nodes.db", tmp_path / "beoserv.log", port=port).start()
    try:
        with stage2_node(altered, tmp_path) as node:
            node.wait_for("does not match the pinned")
            node.wait_for(r"does not match the pinned .*; retry 2")
            assert "stage 3 agent up" not in node.console()
            assert "switch" not in bpstat(server, "--timeline", "0").split("download", 1)[-1]
    finally:
        server.stop()


def check_first_boot(node, master, tmp_path) -> None:
    """What a PXE boot to stage 3 leaves on the node's console, in the registry, the log and the timeline."""
    console = node.console()
    assert "beoboot: permanent address 10.0.2.50/24 on eth0 (node 0)" in console
    assert "beoboot: listening sockets: none" in console  # no port listens on a node
    # stage 3 keeps the lease stage 2 got (QEMU's DHCP gives a day), counted from stage 2's DHCP
    kept = node.wait_for(r"beoboot: dhcp eth0: lease on 10\.0\.2\.15 for 86400 s: renewing in (\d+) s")
    assert 42000 < int(kept.group(1)) < 43200  # T1 is half the day, less the time since stage 2
    row = node_row(master, 0)
    assert row["state"] == "up" and row["mac"] == "52:54:00:12:34:56" and row["address"] == "10.0.2.50"
    # stage 2 logged to the master at once, tagged with the MAC and the stage
    log = master.log_text()
    assert "52:54:00:12:34:56 stage2 info beoboot: dhcp eth0 10.0.2.15/24" in log
    assert "52:54:00:12:34:56 stage3 info beoboot: stage 2 ramdisk freed" in log
    freed = next(line for line in console.splitlines() if "MemAvailable" in line and "before" in line)
    before, after = [int(w) for w in freed.replace(",", " ").split() if w.isdigit()][-2:]
    assert after > before, freed  # the stage-2 ramdisk's memory came back
    timeline = bpstat(master, "--timeline", "0")
    for event in ("stage2_start", "dhcp", "download", "switch", "stage3_ready"):
        assert event in timeline
    svg = tmp_path / "boot.svg"
    bpstat(master, "--timeline", "0", "--svg", svg)
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_pxe_boot_reaches_stage3_then_a_lost_master_reboots_the_node_which_waits_for_it(out, master, tmp_path):
    """One node's life, on one QEMU (each boot costs the suite half a minute): PXE to stage 3, known to the
    master; the master goes, the node reboots, finds no master, retries, and comes back with its number."""
    master.config = tmp_path / "beoserv.toml"
    master.config.write_text('first_node_address = "10.0.2.50"\n')  # BeoNSS: node N gets 10.0.2.50 + N
    master.start()
    with stage2_node(out, tmp_path, reboot=True) as node:
        up = node.wait_for("beoboot: stage 3 ready: node 0 up")
        check_first_boot(node, master, tmp_path)
        master.stop()
        lost = node.wait_for(rf"lost for {MASTER_TIMEOUT} s: reboot\b", after=up.end(), timeout=MASTER_TIMEOUT + 60)
        again = node.wait_for("beoboot: stage 2 agent up", after=lost.end())  # rebooted, PXE again
        node.wait_for(r"register: master http://10\.0\.2\.2:\d+/? unreachable; retry 2", after=again.end())
        master.start()
        node.wait_for("beoboot: stage 3 ready: node 0 up", after=again.end())
        row = node_row(master, 0)
        assert (row["state"], row["boot"], row["address"]) == ("up", 2, "10.0.2.50")


def bpctl(master, *args):
    return subprocess.run(
        [sys.executable, "-m", "beoboot.master.bpsh.bpctl", "--socket", str(master.bpsh_socket), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bpctl_reboots_a_node_which_comes_back_and_powers_it_off(out, master, tmp_path):
    master.start()
    with stage2_node(out, tmp_path, reboot=True) as node:
        up = node.wait_for("beoboot: stage 3 ready: node 0 up")
        master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60)
        job = running_job(master, "0", "sleep", "1000")
        result = bpctl(master, "-S", "0", "-s", "reboot", "--grace", "5")
        assert (result.returncode, result.stderr) == (0, "")
        assert job.wait(30) == 128 + signal.SIGTERM  # the job ended before the node went
        # sync() and the reboot can take long in a TCG guest when the host is busy (an RCU stall was seen once)
        restarting = node.wait_for("reboot: Restarting system", after=up.end(), timeout=120)
        assert node_row(master, 0)["state"] in ("down", "booting")
        again = node.wait_for("beoboot: stage 3 ready: node 0 up", after=restarting.end())
        assert (node_row(master, 0)["boot"], node_row(master, 0)["state"]) == (2, "up")
        master.wait_for_log(
            r"node 0 \(\S+\) job link up", after=master.log_text().index("reboot, as root asked"), timeout=60
        )
        result = bpctl(master, "-S", "0", "-s", "pwroff")
        assert (result.returncode, result.stderr) == (0, "")
        node.wait_for("reboot: Power down", after=again.end(), timeout=120)
        assert node.proc.wait(30) == 0  # QEMU ends with the machine
        assert node_row(master, 0)["state"] == "down"


def test_two_nodes_booting_together_get_different_numbers_and_jobs_name_each_other(out, master, tmp_path):
    master.config = tmp_path / "beoserv.toml"
    master.config.write_text('first_node_address = "10.0.2.50"\nheartbeat_interval = 1\nheartbeat_timeout = 5\n')
    master.start()
    with (
        stage2_node(out, tmp_path, "a", mac="52:54:00:00:00:0a") as a,
        stage2_node(out, tmp_path, "b", mac="52:54:00:00:00:0b", nic="e1000") as b,
    ):
        numbers = {int(vm.wait_for(r"stage 3 ready: node (\d+) up").group(1)) for vm in (a, b)}
        # the cluster's host table reaches each node's environment root at a heartbeat: n1 from node 0
        for vm in (a, b):
            vm.wait_for("the environment root's /etc/hosts now names 2 nodes", timeout=30)
        master.wait_for_log(r"node 1 \(\S+\) job link up", timeout=60)
        for node, other in ((0, 1), (1, 0)):
            result = subprocess.run(
                bpsh_argv(master.bpsh_socket, str(node), "getent", "hosts", f"n{other}"),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.stdout.split() == [f"10.0.2.{50 + other}", f"n{other}", f".{other}"], result.stderr
    assert numbers == {0, 1}
    macs = {n["mac"] for n in json.loads(bpstat(master, "--json"))}
    assert macs == {"52:54:00:00:00:0a", "52:54:00:00:00:0b"}


def test_image_hash_in_manifest_is_the_pin(out):
    manifest = json.loads((out / "manifest.json").read_text())
    stage3 = next(a for a in manifest["artifacts"] if a["name"] == "stage3")
    assert hashlib.sha256((out / stage3["path"]).read_bytes()).hexdigest() == stage3["sha256"]
    cfg = (out / "pxe/pxelinux.cfg/default").read_text()
    assert f"beoboot.pin.stage3={stage3['sha256']}" in cfg
