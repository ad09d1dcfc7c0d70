"""A node's log as the master keeps it: the agent's lines and the kernel's records (agent.kmsg) from the
agent's real client to a real beoserv, and `bpstat --log NODE [--kernel]` showing them."""

import contextlib
import io
import json
import time

import pytest
import requests
from master_helpers import MasterProcess, publish_files

from agent import protocol as p
from agent.download import Backoff
from agent.masterlink import MasterLink
from agent.schema import Stage
from beoboot.master.cli import bpstat_main

MAC = "52:54:00:00:08:01"


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    work = tmp_path_factory.mktemp("nodelog")
    root = work / "boot"
    root.mkdir()
    publish_files(root, {"stage3.cpio": b"x"})
    server = MasterProcess(root, work / "nodes.db", work / "beoserv.log").start()
    yield server
    server.stop()


def bpstat(master, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = bpstat_main(["--master", master.url, *args])
    return status, out.getvalue()


def test_bpstat_log_shows_the_nodes_lines_and_kernel_only_its_kernels(master):
    link = MasterLink(master.url, MAC, "stage2", backoff=Backoff(first=0.01))
    number = link.register().number
    link.queue_log("info", "beoboot: registering with the master")
    # stamped on the kernel's clock, which time.monotonic() reads: on the master, between the two lines
    stamp = time.monotonic()
    link.queue_log("err", "Out of memory: Killed process 412 (python3)", source="kernel", kernel_time=stamp)
    link.stage = Stage.SUPERVISOR
    link.queue_log("warning", "beoboot: stage 3 line")
    assert link.flush(force=True)

    status, text = bpstat(master, "--log", f"n{number}")
    assert status == 0
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].endswith("stage2 info: beoboot: registering with the master")
    assert lines[1].endswith(f"stage2 kernel [{stamp:12.6f}] err: Out of memory: Killed process 412 (python3)")
    assert lines[2].endswith("warning: beoboot: stage 3 line")

    status, text = bpstat(master, "--log", MAC, "--kernel")
    assert status == 0 and text.splitlines() == [lines[1]]
    status, text = bpstat(master, "--log", str(number), "--kernel", "--json")
    (entry,) = json.loads(text)
    assert (entry["source"], entry["level"], entry["kernel_time"]) == ("kernel", "err", stamp)
    master.wait_for_log(rf"node: \S+ {MAC} stage2 kernel err Out of memory")


def test_log_lines_of_an_unknown_source_and_bad_queries_are_refused(master):
    link = MasterLink(master.url, "52:54:00:00:08:02", "stage3", backoff=Backoff(first=0.01))
    number = link.register().number
    batch = p.LogBatch(link.mac, 1.0, (p.LogLine(1.0, Stage.SUPERVISOR, "info", "x", "systemd"),))
    headers = {p.LINK_TOKEN_HEADER: link.registration.link_token}
    response = requests.post(master.url + p.LOGS_PATH, data=p.to_json(batch), headers=headers, timeout=10)
    assert response.status_code == 400 and "source 'systemd'" in response.json()["error"]
    url = master.url + p.NODE_LOG_PATH.format(node=number)
    assert requests.get(url, params={"source": "nope"}, timeout=10).status_code == 400
    assert requests.get(url, params={"limit": "0"}, timeout=10).status_code == 400
    assert bpstat(master, "--log", "n999")[0] == 1
    assert bpstat(master, "--kernel")[0] != 0
