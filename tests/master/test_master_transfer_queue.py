"""The real beoserv with max_transfers = 2: big transfers beyond it wait their turn, round robin across
nodes, or are told to retry (503, Retry-After), never 404; small files and JSON are not held up."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
import requests
from master_helpers import MasterProcess, publish_files

from agent import bootfiles
from agent import protocol as p
from beoboot.master import fdlimit
from beoboot.master.transfers import SMALL_FILE

MACS = {name: f"52:54:00:00:0e:0{i}" for i, name in enumerate("abc")}
BIG = 32 << 20  # more than the socket buffers hold: a client that does not read stalls its transfer


def address(master: MasterProcess) -> tuple[str, int]:
    host, port = master.url.removeprefix("http://").split(":")
    return host, int(port)


def ask(master: MasterProcess, path: str) -> socket.socket:
    """A GET sent on a connection of its own, its answer left unread (a small receive buffer: it stalls)."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect(address(master))
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: beoserv\r\n\r\n".encode())
    return conn


def status_within(conn: socket.socket, seconds: float) -> int | None:
    """The status of the answer on `conn` if it begins within `seconds`, else None."""
    conn.settimeout(seconds)
    try:
        head = conn.recv(12)
    except TimeoutError:
        return None
    return int(head.split()[1])


def transfers_now(master: MasterProcess) -> tuple[int, int]:
    status = requests.get(master.url + p.STATUS_PATH, timeout=5).json()
    return status["transfers_active"], status["transfers_waiting"]


def wait_for_transfers(master: MasterProcess, active: int, waiting: int) -> None:
    deadline = time.monotonic() + 10
    while (now := transfers_now(master)) != (active, waiting):
        assert time.monotonic() < deadline, now
        time.sleep(0.05)


@pytest.fixture
def master(tmp_path):
    # many files: a manifest bigger than a socket's send buffer, as a real build's is (some 200 KiB)
    many = {f"part{n}": b"" for n in range(600)}
    publish_files(tmp_path / "boot", {"big": os.urandom(BIG), "small": b"a small file", **many})
    config = tmp_path / "beoserv.toml"
    config.write_text("max_nodes = 2\nmax_transfers = 2\n")  # a queue of one request per node: 2
    server = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    for mac in MACS.values():
        requests.post(server.url + p.REGISTER_PATH, json={"mac": mac, "stage": "stage2"}, timeout=5).raise_for_status()
    yield server
    server.stop()


def test_transfers_beyond_the_bound_wait_round_robin_or_are_told_to_retry(master):
    big = {name: f"/big?mac={mac}" for name, mac in MACS.items()}
    opened = []
    try:
        stalled = [ask(master, big["a"]), ask(master, big["a"])]
        opened += stalled
        wait_for_transfers(master, 2, 0)
        waiting_a = ask(master, big["a"])  # node a waits first, with two under way...
        opened.append(waiting_a)
        wait_for_transfers(master, 2, 1)
        waiting_b = ask(master, big["b"])  # ...node b, with none, after it
        opened.append(waiting_b)
        wait_for_transfers(master, 2, 2)

        for refused in (big["c"], big["a"]):  # the queue is full; node a has a request waiting already
            answer = requests.get(master.url + refused, timeout=5)
            assert answer.status_code == 503 and 1 <= int(answer.headers["Retry-After"]) <= 6, answer.text
            assert "retry shortly" in answer.json()["error"]
        assert requests.get(master.url + "/small", timeout=5).content == b"a small file"  # no slot needed
        manifest = requests.get(master.url + "/manifest.json", timeout=5)  # every node's first: never queued
        assert manifest.status_code == 200 and len(manifest.content) > SMALL_FILE
        assert requests.get(master.url + p.NODES_PATH, timeout=5).status_code == 200

        stalled[0].close()  # a slot frees: node b has none under way, so it goes first
        assert status_within(waiting_b, 5) == 200
        assert status_within(waiting_a, 0.5) is None
        stalled[1].close()
        assert status_within(waiting_a, 5) == 200
    finally:
        for conn in opened:
            conn.close()
    wait_for_transfers(master, 0, 0)
    refusals = [line for line in master.log_text().splitlines() if "told to retry" in line]
    assert len(refusals) == 1 and "transfers: 2 under way, 2 waiting" in refusals[0], refusals


def test_short_of_descriptors_a_finished_transfer_does_not_keep_its_connection(tmp_path):
    """Nodes may hold more connections than the two an idle node is budgeted (a libcache keeps its
    workers' alive between objects): when what is left below the limit would not hold the transfer slots,
    each transfer's connection is closed when it ends, so idle ones do not take the slots' descriptors."""
    nodes, slots = 100, 2
    publish_files(tmp_path / "boot", {"big": os.urandom(1 << 20)})
    config = tmp_path / "beoserv.toml"
    config.write_text(f"max_nodes = {nodes}\nmax_transfers = {slots}\n")
    master = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config)
    master.start(hard_open_files=fdlimit.needed(nodes, slots))
    idle = []
    try:
        with requests.Session() as session:
            assert session.get(master.url + "/big", timeout=10).headers.get("Connection") != "close"
        idle = [socket.create_connection(address(master)) for _ in range(fdlimit.FDS_PER_NODE * nodes)]
        deadline = time.monotonic() + 10  # the count of open files is taken every second
        while requests.get(master.url + "/big", timeout=10).headers.get("Connection") != "close":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for conn in idle:
            conn.close()
        deadline = time.monotonic() + 10
        while requests.get(master.url + "/big", timeout=10).headers.get("Connection") == "close":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for conn in idle:
            conn.close()
        master.stop()


def test_nodes_sharing_an_address_wait_each_for_its_turn_as_their_downloads_name_them(master, tmp_path):
    """Nodes behind one address (a NAT, a relay, or simulated on one host) are one peer to beoserv: their
    downloads (agent.bootfiles, as stages 2 and 3 fetch) name their MACs, so each waits in line for a slot
    rather than being told to retry as the same node's second request."""
    data = (tmp_path / "boot" / "big").read_bytes()
    manifest = {"artifacts": [{"name": "big", "path": "big", "sha256": hashlib.sha256(data).hexdigest()}]}
    stalled = [ask(master, f"/big?mac={MACS['a']}") for _ in range(2)]
    try:
        wait_for_transfers(master, 2, 0)
        results: dict[str, BaseException | None] = {}

        def fetch(name: str) -> None:
            try:
                bootfiles.fetch(master.url + "/", manifest, "big", str(tmp_path / name), {}, lambda _: None, MACS[name])
                results[name] = None
            except BaseException as exc:
                results[name] = exc

        threads = [threading.Thread(target=fetch, args=(name,), daemon=True) for name in "bc"]
        for thread in threads:
            thread.start()
        wait_for_transfers(master, 2, 2)  # both in line: no 503 for the second
    finally:
        for conn in stalled:
            conn.close()
    for thread in threads:
        thread.join(30)
    assert results == {"b": None, "c": None}
    assert (tmp_path / "b").read_bytes() == data and (tmp_path / "c").read_bytes() == data
    assert "told to retry" not in master.log_text()
