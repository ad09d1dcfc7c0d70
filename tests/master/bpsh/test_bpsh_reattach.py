"""Jobs survive their master: beoserv killed or stopped and started again while a job runs on a simulated
node; bpsh waits, reattaches and gets every output line once, in order, and the job's exit status. Each
with both clients (CLIENTS): the compiled one reattaches as the Python one does."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from master_helpers import CLIENTS, MasterProcess, bpsh_argv, start_simnodes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root"),
]

with_each_client = pytest.mark.parametrize("client", CLIENTS)

LINES = 24  # a line every 0.25 s for 6 s: beoserv goes after 1.25 s and is away for about 2 s of it
TICKER = f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); sleep 0.25; done"


def fast_heartbeats(work) -> Path:
    """A beoserv config with heartbeats every 0.5 s: a node's master_timeout of 2 s then means 4 missed."""
    config = work / "beoserv.toml"
    config.write_text("heartbeat_interval = 0.5\n")
    return config


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "boot").mkdir()
    config = fast_heartbeats(tmp_path)
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    master.port = int(master.url.rsplit(":", 1)[1])  # a restart listens where the nodes look for it
    sim = None
    try:
        sim = start_simnodes(master.url, tmp_path, 1, extra=("--master-lost", "keep", "--master-timeout", "2"))
        master.wait_for_log(r"node 0 \(\S+\) job link up")
        yield master, tmp_path
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        master.stop()


def start_job(master, *command, options=(), client="python"):
    return subprocess.Popen(
        bpsh_argv(master.bpsh_socket, *options, "--cache", "/usr/bin/sleep", "0", *command, client=client),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_line(job, text: bytes, timeout: float = 30) -> bytes:
    """Read the job's stdout up to and including the line `text`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, seen
        seen += job.stdout.readline()
    return seen


def restart(master, down_for: float, signum: int) -> None:
    master.signal(signum)
    master.proc.wait(10)
    master._log_file.close()
    time.sleep(down_for)
    master.start()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
@with_each_client
def test_every_line_arrives_once_in_order_across_a_beoserv_restart(cluster, signum, client):
    master, _ = cluster
    job = start_job(master, "sh", "-c", TICKER, client=client)
    before = wait_for_line(job, b"line 5\n")
    restart(master, 1.5, signum)
    rest, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    assert (before + rest).decode().splitlines() == [f"line {i}" for i in range(LINES)]
    assert b"reattached" in err
    master.wait_for_log(r"job \d+: bpsh reattached")


@with_each_client
def test_an_exit_while_beoserv_is_down_reaches_bpsh_after_the_restart(cluster, client):
    master, _ = cluster
    job = start_job(master, "sh", "-c", "echo started; sleep 1; echo done; exit 7", client=client)
    assert wait_for_line(job, b"started\n") == b"started\n"
    master.signal(signal.SIGKILL)
    master.proc.wait(10)
    master._log_file.close()
    time.sleep(2.5)  # the job ends meanwhile; its node keeps its last line and its exit
    master.start()
    rest, err = job.communicate(timeout=60)
    assert (job.returncode, rest) == (7, b"done\n"), err


@with_each_client
def test_ctrl_c_while_beoserv_is_away_reaches_the_job_once_it_is_back(cluster, client):
    master, _ = cluster
    job = start_job(
        master, "sh", "-c", "trap 'echo got INT; exit 3' INT; echo ready; while :; do sleep 0.1; done", client=client
    )
    wait_for_line(job, b"ready\n")
    master.signal(signal.SIGKILL)
    master.proc.wait(10)
    master._log_file.close()
    job.send_signal(signal.SIGINT)
    time.sleep(1)
    master.start()
    rest, err = job.communicate(timeout=60)
    assert (job.returncode, rest) == (3, b"got INT\n"), err


@with_each_client
def test_bps_lists_the_jobs_a_restarted_beoserv_took_back(cluster, client):
    master, _ = cluster
    job = start_job(master, "sh", "-c", "echo ready; sleep 30", client=client)
    wait_for_line(job, b"ready\n")
    first = jobs(master)
    restart(master, 0.5, signal.SIGKILL)
    master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=30)
    after = jobs(master)
    assert [(row["job"], row["command"], row["state"]) for row in after if row["state"] == "running"] == [
        (row["job"], row["command"], "running") for row in first if row["state"] == "running"
    ]
    job.send_signal(signal.SIGTERM)  # forwarded to the job once bpsh reattached
    job.communicate(timeout=60)
    # a new job after the restart gets an id of its own, never one the last beoserv gave
    again = subprocess.run(bpsh_argv(master.bpsh_socket, "0", "true", client=client), timeout=60)
    assert again.returncode == 0
    newest = max(row["job"] for row in jobs(master))
    assert newest > max(row["job"] for row in first)


@with_each_client
def test_a_node_that_keeps_its_jobs_outlives_the_master_timeout_and_takes_up_its_number(cluster, client):
    """master_lost = "keep" with a 2 s master_timeout: beoserv away 6 s, three times the timeout."""
    master, work = cluster
    job = start_job(master, "sh", "-c", "echo ready; sleep 8; echo still here", client=client)
    wait_for_line(job, b"ready\n")
    restart(master, 6.0, signal.SIGTERM)
    master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=30)
    rest, err = job.communicate(timeout=60)
    assert (job.returncode, rest) == (0, b"still here\n"), err
    log = (work / "simnode.log").read_text()
    assert "master lost for 2 s: keep" in log and "up again" not in log
    rows = bpstat(master)
    assert [(row["number"], row["state"]) for row in rows] == [(0, "up")]


def jobs(master) -> list[dict]:
    bps = [sys.executable, "-m", "beoboot.master.cli", "bps", "--all", "--master", master.url, "--json"]
    return json.loads(subprocess.run(bps, capture_output=True, check=True, timeout=30).stdout)


def bpstat(master) -> list[dict]:
    command = [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", master.url, "--json"]
    deadline = time.monotonic() + 20
    while True:  # the node's next heartbeat marks it up again
        rows = json.loads(subprocess.run(command, capture_output=True, check=True, timeout=30).stdout)
        if all(row["state"] == "up" for row in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@with_each_client
def test_sighup_reopens_the_listening_sockets_and_drops_no_link_or_session(cluster, client):
    master, _ = cluster
    job = start_job(master, "sh", "-c", "echo ready; sleep 2; echo done", client=client)
    wait_for_line(job, b"ready\n")
    socket_inode = master.bpsh_socket.stat().st_ino
    master.signal(signal.SIGHUP)
    master.wait_for_log("listening sockets reopened")
    assert master.bpsh_socket.stat().st_ino != socket_inode  # a new socket, put in place by a rename
    rest, err = job.communicate(timeout=30)
    assert (job.returncode, rest, err) == (0, b"done\n", b"")  # its session went on: no reattach
    assert len(re.findall(r"node 0 \(\S+\) job link up", master.log_text())) == 1  # the link was never dropped
    again = subprocess.run(
        bpsh_argv(master.bpsh_socket, "0", "true", client=client), timeout=60
    )  # the new socket takes bpsh
    assert again.returncode == 0
    with urllib.request.urlopen(master.url + "/api/v1/nodes", timeout=10) as answer:  # and the port, HTTP
        assert answer.status == 200


@with_each_client
def test_a_node_that_reboots_without_its_master_ends_its_jobs_for_their_bpsh(tmp_path, client):
    """master_lost = "reboot": the simulated node ends its jobs and boots again once the master is back;
    its new link holds no job, so bpsh, reattached, gets 255 and why."""
    (tmp_path / "boot").mkdir()
    config = fast_heartbeats(tmp_path)
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    master.port = int(master.url.rsplit(":", 1)[1])
    sim = start_simnodes(master.url, tmp_path, 1, extra=("--master-lost", "reboot", "--master-timeout", "2"))
    try:
        master.wait_for_log(r"node 0 \(\S+\) job link up")
        job = start_job(master, "sh", "-c", "echo ready; sleep 30", client=client)
        wait_for_line(job, b"ready\n")
        restart(master, 4.0, signal.SIGKILL)
        rest, err = job.communicate(timeout=60)
        assert job.returncode == 255 and b"linked again without job" in err, err
        log = (tmp_path / "simnode.log").read_text()
        assert log.count("master lost for 2 s: reboot") == 1 and log.count("node 0 up again") == 1, log
    finally:
        sim.terminate()
        sim.wait(10)
        master.stop()


# a job that writes 3 MB, more than its node keeps unacknowledged (stage3.outputlog, 1 MiB): -b holds
# standard output in beoserv, so beoserv must acknowledge what it holds or the job blocks for good
BIG = "i=0; while [ $i -lt 40000 ]; do echo line $i of some seventy bytes of folded output, padded; i=$((i+1)); done"


@with_each_client
def test_folded_output_past_the_nodes_window_does_not_block_the_job(cluster, client):
    master, work = cluster
    job = start_job(master, "sh", "-c", BIG, options=["-b"], client=client)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    lines = out.decode().splitlines()
    # seen once in a full run, compiled client: status 0 and no output at all; what the logs said, if again
    node_log = (work / "simnode.log").read_text()
    why = f"stderr {err[-2000:]!r}\nbeoserv:\n{master.log_text()[-4000:]}\nnode:\n{node_log[-3000:]}"
    assert lines[:3] == ["-" * 15, "n0", "-" * 15], why
    assert lines[3:] == [f"line {i} of some seventy bytes of folded output, padded" for i in range(40000)]


@with_each_client
def test_folded_output_goes_on_led_by_node_after_a_restart(cluster, client):
    master, _ = cluster
    job = start_job(master, "sh", "-c", "echo before; sleep 4; echo after; exit 5", options=["-b"], client=client)
    deadline = time.monotonic() + 30
    while not any(row["state"] == "running" for row in jobs(master)):
        assert time.monotonic() < deadline, jobs(master)
        time.sleep(0.2)
    restart(master, 0.5, signal.SIGKILL)
    out, err = job.communicate(timeout=60)
    assert job.returncode == 5, err
    assert out == b"0: after\n", err  # what the killed beoserv held for -b died with it (README)
