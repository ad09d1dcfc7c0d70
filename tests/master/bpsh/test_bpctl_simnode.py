"""bpctl on simulated nodes: the real beoserv and `python -m stage3.simnode`, which carries out a power order
as a booted node does (jobs ended, heartbeats stopped, link closed) minus the kernel's part; a reboot
registers again as the next boot."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from master_helpers import MasterProcess, bpsh_argv, let_others_reach, running_job, start_simnodes
from nodes import bpstat, node_row

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "boot").mkdir()
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    sim = None
    try:
        sim = start_simnodes(master.url, tmp_path, 2)
        for number in (0, 1):
            master.wait_for_log(rf"node {number} \(\S+\) job link up")
        yield master, tmp_path / "simnode.log"
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        master.stop()


def bpctl(master, *args):
    return subprocess.run(
        [sys.executable, "-m", "beoboot.master.bpsh.bpctl", "--socket", str(master.bpsh_socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def events(master, number, boot):
    timeline = json.loads(bpstat(master, "--timeline", str(number), "--boot", str(boot), "--json"))
    return [(e["event"], e["detail"]) for e in timeline["entries"]]


def test_reboot_ends_the_jobs_with_sigterm_and_the_node_comes_back_as_its_next_boot(cluster):
    master, simlog = cluster
    job = running_job(master, "0", "sleep", "100")
    result = bpctl(master, "-S", "0", "-s", "reboot")
    assert (result.returncode, result.stderr) == (0, "")
    assert job.wait(10) == 128 + signal.SIGTERM  # bpsh got its job's end before the node went
    assert ("reboot", "bpctl, as root asked") in events(master, 0, 1)
    deadline = time.monotonic() + 20
    while (row := node_row(master, 0))["boot"] != 2 or row["state"] != "up":
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    assert node_row(master, 1)["boot"] == 1 and node_row(master, 1)["state"] == "up"  # only node 0
    master.wait_for_log(r"node 0 \(\S+\) job link up", after=master.log_text().index("reboot, as root asked"))
    again = subprocess.run(bpsh_argv(master.bpsh_socket, "0", "sh", "-c", "exit 4"), timeout=60)
    assert again.returncode == 4  # its jobs run again, from the libcache it kept
    assert "node 0 up again" in simlog.read_text()


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_time(cluster):
    master, _ = cluster
    # sleep inherits the ignored TERM; a script's commands come with --cache
    job = running_job(master, "--cache", "/usr/bin/sleep", "1", "sh", "-c", "trap '' TERM; sleep 100")
    started = time.monotonic()
    result = bpctl(master, "-S", "1", "-s", "halt", "--grace", "1.5")
    took = time.monotonic() - started
    assert (result.returncode, result.stderr) == (0, "")
    assert job.wait(10) == 128 + signal.SIGKILL
    assert 1.5 <= took < 10, took
    assert node_row(master, 1)["state"] == "down"
    assert ("halt", "bpctl, as root asked") in events(master, 1, 1)
    refused = subprocess.run(bpsh_argv(master.bpsh_socket, "1", "true"), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 127 and "node 1 is not up" in refused.stderr
    time.sleep(1)  # a halted node stays down: no heartbeat or registration turns it up again
    assert node_row(master, 1)["state"] == "down" and node_row(master, 1)["boot"] == 1


def test_all_nodes_power_off_together(cluster):
    master, simlog = cluster
    result = bpctl(master, "-S", "all", "-s", "pwroff")
    assert (result.returncode, result.stderr) == (0, "")
    assert [row["state"] for row in json.loads(bpstat(master, "--json"))] == ["down", "down"]
    assert simlog.read_text().count("poweroff, as root asked") == 2


def test_only_root_may_order_and_a_node_that_is_not_up_is_named(cluster, tmp_path):
    master, _ = cluster
    let_others_reach(master.bpsh_socket)
    # nobody's request, sent as bpctl would (the module may not be readable by nobody here)
    program = (
        "import socket, sys\nc = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\nc.connect(sys.argv[1])\n"
        "socket.send_fds(c, [b'bpctl1\\0' b'0\\0reboot\\0' b'1.0'], [0, 1, 2])\nsys.exit(int(c.recv(64)[1:]))"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", program, str(master.bpsh_socket)],
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
        cwd="/",
    )
    assert (result.returncode, result.stderr) == (1, "bpctl: only root may reboot nodes (you are uid 65534)\n")
    assert node_row(master, 0)["state"] == "up"

    result = bpctl(master, "-S", "0,7", "-s", "halt")
    assert (result.returncode, result.stderr) == (1, "bpctl: node 7 is not up (no job link): nothing to halt\n")
    assert node_row(master, 0)["state"] == "down"  # the nodes that are up still act

    result = bpctl(master, "-S", "1", "-s", "suspend")
    assert result.returncode == 2 and "invalid choice: 'suspend'" in result.stderr
    assert node_row(master, 1)["state"] == "up"


def test_a_node_set_less_its_exclusions_is_powered_off(cluster):
    master, simlog = cluster
    result = bpctl(master, "-a", "-x", "n1", "-s", "pwroff")
    assert (result.returncode, result.stderr) == (0, "")
    assert [row["state"] for row in json.loads(bpstat(master, "--json"))] == ["down", "up"]
    result = bpctl(master, "-S", "n[1-0]", "-s", "pwroff")
    assert result.returncode == 1 and "node set 'n[1-0]': the range 1-0 runs backwards" in result.stderr
    assert node_row(master, 1)["state"] == "up"
