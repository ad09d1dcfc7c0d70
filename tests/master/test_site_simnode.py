"""The node's world as the master sets it up, on simulated nodes (the real beoserv and `python -m
stage3.simnode`): [[mounts]] (tmpfs carried out in the node's root, a failure reported by name in the
node's log and bpstat), resolv.conf from the master's config with a name server of the test's own, and
the node-up hook once per boot."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from master_helpers import MasterProcess, bpsh_argv, start_simnodes
from nodes import bpstat, node_row

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs and mount: needs root")

TINYDNS = str(Path(__file__).resolve().parents[1] / "support" / "tinydns.py")
DNS_ADDRESS = "127.53.0.1"  # loopback, the test's own name server's; nothing else listens there
OUTSIDE = "licence.example.org"
OUTSIDE_ADDRESS = "10.20.30.40"  # only ever an answer, never a destination


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("site")
    (work / "boot").mkdir()
    ups = work / "ups"
    hook = [
        sys.executable,
        "-c",
        f"import os, sys; open({str(ups)!r}, 'a').write(sys.argv[1] + os.environ['BEOBOOT_NODE'] + '\\n')",
    ]
    (work / "beoserv.toml").write_text(
        f"on_node_up = {json.dumps([*hook, 'up'])}\n"
        f"on_node_down = {json.dumps([*hook, 'down'])}\n"
        f'dns_servers = ["{DNS_ADDRESS}"]\n'
        'dns_search = ["cluster.example.org"]\n'
        '[[mounts]]\ntype = "tmpfs"\ntarget = "/scratch"\noptions = "size=16m,mode=1777"\n'
        '[[mounts]]\ntype = "tmpfs"\ntarget = "/broken"\noptions = "size=plenty"\n'
        '[[mounts]]\ntype = "nfs"\nsource = "master:/home"\ntarget = "/home"\n'
    )
    dns = subprocess.Popen(
        [sys.executable, TINYDNS, "serve", DNS_ADDRESS, "53", f"{OUTSIDE}={OUTSIDE_ADDRESS}"], stdout=subprocess.PIPE
    )
    assert dns.stdout is not None and b"serving" in dns.stdout.readline()
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log", config=work / "beoserv.toml")
    master.start()
    sim = None
    try:
        sim = start_simnodes(master.url, work, 2)
        for number in (0, 1):
            master.wait_for_log(rf"node {number} \(\S+\) job link up")
        yield master, work
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(10)
        master.stop()
        dns.kill()
        dns.wait()


def bpsh(master, *args):
    return subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=120)


def test_tmpfs_is_mounted_in_the_nodes_root_before_jobs_run(cluster):
    master, _ = cluster
    done = bpsh(master, "0", "sh", "-c", "echo kept > /scratch/f && cat /scratch/f && cat /proc/self/mounts")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "kept"
    assert any(line.split()[1:3] == ["/scratch", "tmpfs"] and "size=16384k" in line for line in lines), lines
    assert not any(line.split()[1] in ("/broken", "/home") for line in lines[1:])


def test_a_failed_mount_is_named_in_the_nodes_log_and_bpstat(cluster):
    master, work = cluster
    row = node_row(master, 0)
    assert [f.split(":")[0] for f in row["mount_failures"]] == ["/broken"], row
    assert "failed:/broken" in bpstat(master, "0")
    assert "mount /broken: " in bpstat(master, "0")
    log = (work / "simnode.log").read_text()
    assert "mount /broken (tmpfs tmpfs) failed:" in log
    assert "mount /home (nfs master:/home): not carried out here (only: tmpfs)" in log
    timeline = json.loads(bpstat(master, "--timeline", "0", "--json"))
    assert [e["detail"].split(":")[0] for e in timeline["entries"] if e["event"] == "mount_failed"] == ["/broken"]


def test_names_resolve_from_files_then_the_masters_name_servers(cluster):
    master, work = cluster
    resolv = (work / "nodes/node0/env/etc/resolv.conf").read_text()
    assert f"nameserver {DNS_ADDRESS}\n" in resolv and "search cluster.example.org\n" in resolv
    assert (work / "nodes/node0/env/etc/nsswitch.conf").read_text().endswith("hosts: files dns\n")
    deadline = time.monotonic() + 20
    while True:  # n1 comes with the host table, shortly after node 1 registered
        done = bpsh(master, "0", "getent", "ahostsv4", "n1")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done.stdout.split()[0] == "127.1.0.2", done
    done = bpsh(master, "0", "sh", "-c", f"getent hosts master; getent hosts {OUTSIDE}; getent hosts nowhere.org")
    found = [line.split() for line in done.stdout.splitlines()]
    assert found[0][:2] == ["127.0.0.1", "master"], done  # from /etc/hosts
    assert found[1:] == [[OUTSIDE_ADDRESS, OUTSIDE]], done  # from the test's name server, by resolv.conf
    assert done.returncode == 2  # getent's "not found", for the name no server knows


def hook_runs(work):
    return sorted((work / "ups").read_text().split()) if (work / "ups").exists() else []


def wait_for_hooks(master, work, expected):
    deadline = time.monotonic() + 20
    while hook_runs(work) != expected:
        assert time.monotonic() < deadline, (hook_runs(work), master.log_text())
        time.sleep(0.1)


def test_the_node_up_hook_runs_once_per_boot_with_the_node_number(cluster):
    master, work = cluster
    wait_for_hooks(master, work, ["up0", "up1"])
    assert "on_node_up for node 1: " in master.log_text()
    time.sleep(1)  # heartbeats and events since did not run it again
    assert hook_runs(work) == ["up0", "up1"]
    reboot = subprocess.run(
        [
            sys.executable,
            "-m",
            "beoboot.master.bpsh.bpctl",
            "--socket",
            str(master.bpsh_socket),
            "-S",
            "1",
            "-s",
            "reboot",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reboot.returncode == 0, reboot.stderr
    wait_for_hooks(master, work, ["down1", "up0", "up1", "up1"])  # down, then up in its next boot
    assert node_row(master, 1)["boot"] == 2
