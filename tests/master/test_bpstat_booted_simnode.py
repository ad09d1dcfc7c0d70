"""bpstat shows what each node booted (kernel, image hashes, agent version) and marks the nodes whose next
boot a rebuild changed: the real beoserv serving a published build, two simulated nodes that boot from it
(`simnode --boot`: stage 3 and the environment root fetched by their pins), then a rebuild of stage 3."""

import json
import os
import subprocess
import sys

import pytest
from master_helpers import MasterProcess, publish_files, start_simnodes

from agent import __version__ as agent_version

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")

KERNEL = os.uname().release  # a simulated node runs the host's kernel
BUILD = {"stage3": b"stage three, first build", "envroot": b"the environment root"}


def bpstat(master, *args):
    argv = [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", master.url, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("booted")
    root = work / "boot"
    root.mkdir()
    publish_files(root, BUILD, kernel_version=KERNEL)
    master = MasterProcess(root, work / "nodes.db", work / "beoserv.log").start()
    sim = start_simnodes(master.url, work, 2, extra=("--boot",))
    yield master, root
    sim.terminate()
    sim.wait(10)
    master.stop()


def sha256(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_bpstat_shows_what_each_node_booted_and_marks_those_a_rebuild_changed(cluster):
    master, root = cluster
    rows = json.loads(bpstat(master, "--json"))
    assert [row["booted"] for row in rows] == [
        {"kernel": KERNEL, "images": {name: sha256(data) for name, data in BUILD.items()}}
    ] * 2
    assert [(row["agent_version"], row["next_boot_changes"]) for row in rows] == [(agent_version, [])] * 2
    table = bpstat(master)
    assert "agent" in table and KERNEL in table and f"stage3:{sha256(BUILD['stage3'])[:8]}" in table
    assert "same" in table and "*" not in table

    publish_files(root, {**BUILD, "stage3": b"stage three, rebuilt"}, kernel_version="9.9.9-new")
    rows = json.loads(bpstat(master, "--json", "n1"))
    assert [(row["number"], row["next_boot_changes"]) for row in rows] == [(1, ["kernel", "stage3"])]
    table = bpstat(master)
    assert ".0*" in table and ".1*" in table and "new kernel,stage3" in table
    assert "its next boot brings the new one" in table
