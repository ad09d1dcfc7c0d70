"""The master's job hub against what a user or a node can do wrong on purpose or by accident: a node that
speaks for another node's job, a fetch of objects by anyone who can reach the port, a Ctrl-C before the
jobs exist, a node list with millions of nodes. The real beoserv, simulated nodes and the bpsh command."""

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from master_helpers import bpsh_argv, simulated_cluster

from agent import protocol as p
from agent.schema import Stage

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with simulated_cluster(tmp_path_factory.mktemp("hub")) as master:
        yield master


def bpsh(master, *args, **kwargs):
    return subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=60, **kwargs)


def fetch(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={p.LINK_TOKEN_HEADER: token} if token is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_objects_go_only_to_a_node_whose_link_is_up(cluster):
    """Anyone reaching the port could otherwise fetch another user's file by its hash, or test guesses of
    its content against it. (A node's token fetches only its own live jobs' objects: test_node_trust.)"""
    digest = hashlib.sha256(Path("/usr/bin/sleep").read_bytes()).hexdigest()
    url = cluster.url + p.OBJECTS_PATH.format(digest=digest)
    with sqlite3.connect(cluster.db) as db:
        (token,) = db.execute("SELECT link_token FROM nodes WHERE number = 0").fetchone()
    job = subprocess.Popen(bpsh_argv(cluster.bpsh_socket, "0", "sleep", "30"))
    try:
        running_job(cluster, "sleep 30")
        assert (fetch(url, None), fetch(url, "not-a-token"), fetch(url, token)) == (403, 403, 200)
    finally:
        job.terminate()
        job.wait(30)


async def forge_exit_for(master, job: int) -> None:
    """Register as a new node (any host may) and, over its own job link, claim another node's job."""
    async with aiohttp.ClientSession() as http:
        register = p.RegisterRequest(mac="02:66:66:00:00:01", stage=Stage.SUPERVISOR)
        async with http.post(master.url + p.REGISTER_PATH, data=p.to_json(register)) as response:
            token = json.loads(await response.text())["link_token"]
        link = master.url + p.JOBS_LINK_PATH + "?mac=02:66:66:00:00:01"
        async with http.ws_connect(link, headers={p.LINK_TOKEN_HEADER: token}) as ws:
            await ws.send_bytes(struct.pack(p.IO_HEADER, p.Stream.STDOUT, job) + b"forged\n")
            await ws.send_str(p.encode_frame(p.JobExit(job, 0)))
            await asyncio.sleep(0.5)


def running_job(master, command: str) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(master.url + p.JOBS_PATH, timeout=10) as response:
            rows = json.loads(response.read())["jobs"]
        found = [row["job"] for row in rows if row["command"] == command and row["state"] == "running"]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"{command!r} never ran")


def test_a_node_cannot_write_to_or_end_another_nodes_job(cluster):
    command = "sh -c sleep 2; exit 3"
    victim = subprocess.Popen(
        bpsh_argv(cluster.bpsh_socket, "0", "sh", "-c", "sleep 2; exit 3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    asyncio.run(forge_exit_for(cluster, running_job(cluster, command)))
    out, _ = victim.communicate(timeout=30)
    assert (victim.returncode, out) == (3, "")  # its own end, not the forged one


def test_ctrl_c_while_the_manifest_is_built_still_reaches_the_job(cluster):
    """The signal comes before the jobs exist (a 3000-file --cache tree to describe): it is kept and sent
    with them, so bpsh ends by it, as a shell's child would, not when the job ends by itself."""
    tree = Path(tempfile.mkdtemp(prefix="beoboot-hub-", dir="/tmp"))
    try:
        for n in range(3000):
            (tree / f"d{n % 30}").mkdir(exist_ok=True)
            (tree / f"d{n % 30}" / f"f{n}").write_text(str(n))
        started = time.monotonic()
        job = subprocess.Popen(bpsh_argv(cluster.bpsh_socket, "--cache", str(tree), "0", "sleep", "20"))
        time.sleep(0.2)
        job.send_signal(signal.SIGINT)
        assert job.wait(30) == 128 + signal.SIGINT
        assert time.monotonic() - started < 15
    finally:
        subprocess.run(["rm", "-rf", str(tree)], check=True)


def test_a_node_list_of_millions_is_refused_at_once_in_a_line(cluster):
    started = time.monotonic()
    result = bpsh(cluster, "0-3000000", "true")
    assert result.returncode == 2 and "3000001 nodes, more than the 65536 one set may name" in result.stderr
    assert len(result.stderr) < 500 and time.monotonic() - started < 5
    result = bpsh(cluster, "0-40", "true")
    assert "node 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 30 more are not up" in result.stderr


def test_one_slow_reader_does_not_hold_up_the_nodes_other_jobs(cluster):
    """A bpsh whose output no one reads: its job is held on the node (JobFlow), not the node's link, which
    every other job on that node (another user's too) needs."""
    stalled = subprocess.Popen(bpsh_argv(cluster.bpsh_socket, "0", "yes"), stdout=subprocess.PIPE)  # never read
    try:
        time.sleep(1.5)  # the pipe and beoserv's queue fill up
        started = time.monotonic()
        result = bpsh(cluster, "0", "echo", "through")
        assert (result.returncode, result.stdout) == (0, "through\n")
        assert time.monotonic() - started < 5
    finally:
        stalled.stdout.close()  # as `bpsh 0 yes | head` ends: the job gets SIGPIPE, its held output drains
        assert stalled.wait(30) == 128 + signal.SIGPIPE
