"""One QEMU node (TCG) whose RTC is eleven years behind, booted by the real master: the master sets its
clock at registration, and its kernel's log reaches the master from stage 2's first second on. The node
reaches the master at 10.0.2.2."""

import json
import re
import subprocess
import sys
import time

import pytest
from master_helpers import run_bpsh, shared_port
from nodes import node_row, node_up

pytestmark = pytest.mark.integration

RTC = "2015-01-01T00:00:00"
RTC_EPOCH = 1420070400  # RTC as seconds since the epoch
LOG_WAIT = 60  # seconds for a line to reach the master: the next heartbeat's flush, on a slow TCG node


@pytest.fixture(scope="module")
def node(shared_out, tmp_path_factory):
    work = tmp_path_factory.mktemp("qemu-clock")
    with node_up(shared_out, shared_port(), work, extra=("-rtc", f"base={RTC}")) as (master, vm):
        yield master, vm


bpsh = run_bpsh


def node_log(master, *args):
    argv = [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", master.url, "--log", "0", *args]
    return json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True, check=True).stdout)


def wait_for_log_entry(master, pattern, *args):
    deadline = time.monotonic() + LOG_WAIT
    while True:
        entries = node_log(master, *args)
        found = [e for e in entries if re.search(pattern, e["message"])]
        if found or time.monotonic() > deadline:
            return found, entries
        time.sleep(1)


def test_a_node_with_its_rtc_years_behind_runs_on_the_masters_time(node):
    master, vm = node
    # stage 2 set it at its registration; by stage 3's the clock was right
    stepped = vm.wait_for(r"clock set to the master's: it was \+(\d+)\.\d+ s off", timeout=5)
    assert int(stepped.group(1)) > time.time() - RTC_EPOCH - 86400  # it had started at the RTC's 2015
    before = time.time()
    result = bpsh(master, "0", "/usr/bin/python3", "-c", "import time; print(repr(time.time()))")
    after = time.time()
    assert result.returncode == 0, result.stderr
    assert before - 1 <= float(result.stdout) <= after + 1
    # the heartbeats' measurement, as bpstat shows it
    deadline = time.monotonic() + LOG_WAIT
    while (row := node_row(master, 0))["clock_offset"] is None and time.monotonic() < deadline:
        time.sleep(1)
    assert abs(row["clock_offset"]) < 1 and abs(row["clock_residual"]) < 1, row


def test_the_kernels_log_reaches_the_master_from_stage_2_and_stage_3_sends_none_again(node):
    master, _ = node
    found, entries = wait_for_log_entry(master, r"^Linux version ", "--kernel")
    assert [e["stage"] for e in found] == ["stage2"], found  # stage 3 went on after what stage 2 sent
    assert all(e["source"] == "kernel" for e in entries)
    kernel_times = [e["kernel_time"] for e in entries if e["stage"] == "stage2"]
    assert kernel_times[0] < 1.0  # its first second: the kernel's very first records


def test_an_oom_kill_in_a_job_shows_in_the_masters_log_for_the_node(node):
    """A job that eats the node's memory, first in line for the OOM killer (oom_score_adj 1000, which a
    process may raise for itself): the kernel kills it and says so, and bpstat --log --kernel shows it."""
    master, _ = node
    hog = (
        "open('/proc/self/oom_score_adj', 'w').write('1000')\n"
        "chunks = []\n"
        "while True:\n"
        "    chunks.append(b'x' * (16 << 20))\n"
    )
    result = bpsh(master, "0", "/usr/bin/python3", "-c", hog)
    assert result.returncode == 137, (result.returncode, result.stderr)  # SIGKILL
    found, entries = wait_for_log_entry(master, r"Out of memory: Killed process \d+ \(python3\)", "--kernel")
    assert found and found[-1]["stage"] == "stage3" and found[-1]["level"] == "err", entries[-20:]
    everything = node_log(master)
    assert any(e["source"] == "agent" for e in everything)  # the agent's own lines are there too
