"""Node sets, -x, -b, --fanout, -t and the worst node's status, end to end: the real beoserv with a
[groups] table, four simulated nodes (`python -m stage3.simnode`), and the real bpsh, bpstat, bpctl and bpcp
command lines."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from master_helpers import CLIENTS, MasterProcess, bpsh_argv, running_job, start_simnodes

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")

HOSTNAME = ("cat", "/tmp/who")  # a job's node says who it is: n0, n1, ... (written by the fixture)
CONFIG = """
[groups]
rack1 = "n[0-1]"
gpu = "3"
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    (work / "boot").mkdir()
    (work / "beoserv.toml").write_text(CONFIG)
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log", config=work / "beoserv.toml")
    master.start()
    sim = start_simnodes(master.url, work, 4)
    # simulated nodes have no /etc/hostname: each is told its name in its environment root's /tmp, once
    # bpsh -p said which node runs in which directory
    roots = sorted((work / "nodes").glob("node*/env"))
    for root in roots:
        (root / "tmp" / "who").write_text(root.parent.name + "\n")
    ran = subprocess.run(bpsh_argv(master.bpsh_socket, "-p", "-a", *HOSTNAME), capture_output=True, text=True)
    for line in ran.stdout.splitlines():
        number, _, directory = line.partition(": ")
        (work / "nodes" / directory / "env" / "tmp" / "who").write_text(f"n{number}\n")
    assert len(ran.stdout.splitlines()) == len(roots) == 4, ran
    yield master
    sim.terminate()
    sim.wait(10)
    master.stop()


def bpsh(master, *args, client="python", **kwargs):
    argv = bpsh_argv(master.bpsh_socket, *args, client=client)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


with_each_client = pytest.mark.parametrize("client", CLIENTS)  # the compiled client must behave as the Python one


def run(*argv):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "selection, names",
    [
        (["n[0-3]"], "n0 n1 n2 n3"),
        (["0-2"], "n0 n1 n2"),  # bpsh's old forms
        (["0,3"], "n0 n3"),
        ([".2"], "n2"),
        (["-a"], "n0 n1 n2 n3"),
        (["all"], "n0 n1 n2 n3"),
        (["@up"], "n0 n1 n2 n3"),
        (["@rack1,@gpu"], "n0 n1 n3"),  # the config's groups
        (["-x", "n1", "@up"], "n0 n2 n3"),
        (["-a", "-x", "@rack1"], "n2 n3"),
        (["-x", "@gpu", "-x", "0", "n[0-3]"], "n1 n2"),
        (["n[0-3]!n2"], "n0 n1 n3"),
    ],
)
@with_each_client
def test_node_sets_choose_the_nodes(cluster, selection, names, client):
    result = bpsh(cluster, "-s", *selection, *HOSTNAME, client=client)
    assert (result.returncode, result.stdout.split(), result.stderr) == (0, names.split(), "")


@pytest.mark.parametrize(
    "selection, complaint",
    [
        ("n[5-3]", "node set 'n[5-3]': the range 5-3 runs backwards: write 3-5"),
        ("n[0-99999999]", "more than the 65536 one set may name"),
        ("@rack9", "no group @rack9 (groups are @all, @booting, @down, @up, @gpu, @rack1"),
        ("n1x", "node set 'n1x': not a node"),
    ],
)
@with_each_client
def test_a_bad_node_set_is_a_usage_error_naming_it(cluster, selection, complaint, client):
    result = bpsh(cluster, selection, "true", client=client)
    assert result.returncode == 2 and complaint in result.stderr, result.stderr
    assert "hint: write nodes as" in result.stderr


@with_each_client
def test_a_node_that_is_not_there_is_named(cluster, client):
    result = bpsh(cluster, "n[2-5]", "true", client=client)
    assert result.returncode == 127 and "node 4, 5 are not up" in result.stderr, result.stderr


@with_each_client
def test_the_status_is_the_worst_nodes(cluster, client):
    result = bpsh(cluster, "n[0-3]", "sh", "-c", "exit $(cut -c2 /tmp/who)", client=client)
    assert result.returncode == 3


@with_each_client
def test_fold_groups_identical_output(cluster, client):
    script = "case $(cat /tmp/who) in n0|n2) echo even;; *) echo odd; echo on >&2;; esac"
    result = bpsh(cluster, "-b", "@up", "sh", "-c", script, client=client)
    assert result.returncode == 0
    assert result.stdout == (
        "---------------\nn[0,2] (2)\n---------------\neven\n---------------\nn[1,3] (2)\n---------------\nodd\n"
    )
    assert sorted(result.stderr.splitlines()) == ["1: on", "3: on"]  # not folded: led by its node, as it came


def test_fanout_runs_that_many_at_once(cluster):
    script = "date +%s.%N; sleep 0.3; date +%s.%N"
    result = bpsh(cluster, "-p", "--fanout", "2", "n[0-3]", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    times: dict[str, list[float]] = {}
    for line in result.stdout.splitlines():
        node, _, stamp = line.partition(": ")
        times.setdefault(node, []).append(float(stamp))
    spans = sorted(times.values())
    assert len(spans) == 4
    at_once = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert at_once == 2  # never more than two; two did run together


def test_fanout_below_the_node_count_gives_the_jobs_no_stdin(cluster):
    result = bpsh(cluster, "-s", "--fanout", "1", "n[0-1]", "cat", input="for the first only?\n")
    assert (result.returncode, result.stdout) == (0, "")


def test_ctrl_c_ends_the_running_jobs_and_starts_no_more(cluster):
    job = running_job(cluster, "--fanout", "1", "n[0-3]", "sleep", "30")
    job.send_signal(signal.SIGINT)
    assert job.wait(10) == 128 + signal.SIGINT
    bps = run("beoboot.master.cli", "bps", "--master", cluster.url, "--json", "--all")
    sleeps = [row for row in json.loads(bps.stdout) if row["command"] == "sleep 30"]
    assert len(sleeps) == 4 and sum(row["pid"] != 0 for row in sleeps) == 1  # one ran; three never started


def test_a_job_past_its_timeout_is_killed_and_reported(cluster):
    script = "case $(cat /tmp/who) in n0) sleep 30;; esac; echo done"
    started = time.monotonic()
    result = bpsh(cluster, "-t", "1", "n[0-1]", "sh", "-c", script)
    assert time.monotonic() - started < 10
    assert result.returncode == 255  # as clush's for a command timeout
    assert result.stdout == "done\n"
    assert "bpsh: node 0: command timeout: still running after -t 1 s, killed" in result.stderr


def test_bpstat_takes_a_node_set(cluster):
    listed = run("beoboot.master.cli", "bpstat", "--master", cluster.url, "--json", "@rack1,@gpu", "-x", "n0")
    assert listed.returncode == 0, listed.stderr
    assert [row["number"] for row in json.loads(listed.stdout)] == [1, 3]
    bad = run("beoboot.master.cli", "bpstat", "--master", cluster.url, "n[3-1]")
    assert bad.returncode != 0 and "runs backwards" in bad.stderr


def test_bpctl_refuses_a_bad_node_set_and_acts_on_none(cluster):
    result = run("beoboot.master.bpsh.bpctl", "--socket", str(cluster.bpsh_socket), "-S", "@rack9", "-s", "halt")
    assert result.returncode == 1 and "no group @rack9" in result.stderr
    assert bpsh(cluster, "-a", "true").returncode == 0  # every node still up


def test_bpcp_copies_to_a_node_set(cluster, tmp_path):
    source = tmp_path / "data"
    source.write_text("payload\n")
    bpcp = ("beoboot.master.bpsh.bpcp", "--socket", str(cluster.bpsh_socket))
    copied = run(*bpcp, str(source), "@rack1:/tmp/data")
    assert copied.returncode == 0, copied.stderr
    assert bpsh(cluster, "-s", "n[0-1]", "cat", "/tmp/data").stdout == "payload\n" * 2
    back = run(*bpcp, "n[0-1]:/tmp/data", str(tmp_path / "back"))
    assert back.returncode == 1 and "names 2 nodes: a copy to the master comes from one" in back.stderr
