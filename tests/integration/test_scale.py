"""Hundreds of nodes on one master under a service's ordinary open-files limit (soft 1024): a cold job on
every node with no failure, and the master's descriptors bounded by its nodes, not by what they did."""

import json
import re
import signal
import subprocess

import pytest
from master_helpers import MasterProcess, bpsh_argv, start_simnodes

NODES = 300
SOFT_LIMIT = 1024
SOCKETS_PER_IDLE_NODE = 2  # its heartbeat connection and its job link


@pytest.mark.integration
def test_a_cold_job_on_300_nodes_under_a_soft_limit_of_1024_files(tmp_path):
    (tmp_path / "boot").mkdir()
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log")
    master.start(open_files=SOFT_LIMIT)
    report = tmp_path / "report.json"
    sim = start_simnodes(master.url, tmp_path, NODES, timeout=120, extra=("--report", str(report)))
    try:
        job = subprocess.run(
            bpsh_argv(master.bpsh_socket, "-a", "-p", "/bin/sh", "-c", "echo ok"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert job.returncode == 0, job.stderr[-3000:]
        answered = re.findall(r"^(\d+): ok$", job.stdout, re.MULTILINE)
        assert len(set(answered)) == NODES, (len(answered), job.stdout[-1000:], job.stderr[-2000:])
        fds, _ = master.fds_and_rss()
        assert fds <= SOCKETS_PER_IDLE_NODE * NODES + 64, fds  # the downloads' connections are gone again
        log = master.log_text()
        # an exhausted resource is a 503 logged once per interval, never a "not found" (node numbers past
        # 403 hold " 404" too: the status is looked for as it is written)
        assert "Too many open files" not in log and not re.search(r"HTTP 404|404 Not Found", log), log[-3000:]
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(60)
        master.stop()
    figures = json.loads(report.read_text())
    assert [n for n in figures["nodes"] if n["error"]] == []
    assert len(figures["nodes"]) == NODES and figures["cpu_seconds"] > 0
