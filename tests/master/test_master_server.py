"""The real beoserv in a child process, driven by the agent's real client (agent.masterlink) as nodes."""

import contextlib
import email.utils
import hashlib
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import zlib

import pytest
import requests
from master_helpers import MasterProcess, publish_files

from agent import protocol as p
from agent.download import Backoff, fetch
from agent.httpclient import Connection, HttpError
from agent.masterlink import MasterLink, MasterLinkError
from agent.schema import Stage
from beoboot.master.server import HOSTS_DELAY
from beoboot.master.writebehind import INTERVAL

MACS = [f"52:54:00:00:01:{i:02x}" for i in range(4)]
FAST = Backoff(first=0.01, cap=0.05)


@pytest.fixture(scope="module")
def boot_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot")
    publish_files(root, {"stage3.cpio": os.urandom(3 << 20), "sub/vmlinuz": b"kernel"})
    return root


@pytest.fixture(scope="module")
def master(boot_tree, tmp_path_factory):
    work = tmp_path_factory.mktemp("master")
    config = work / "beoserv.toml"
    config.write_text('first_node_address = "10.54.0.10"\n')
    server = MasterProcess(boot_tree, work / "nodes.db", work / "beoserv.log", config).start()
    yield server
    server.stop()


def link(master, mac, stage="stage1"):
    return MasterLink(master.url, mac, stage, backoff=FAST, timeout=5)


def test_nodes_get_numbers_in_order_and_keep_them(master):
    links = [link(master, mac) for mac in MACS[:3]]
    replies = [lk.register(p.Hardware("cpu", 2, 1 << 20)) for lk in links]
    base = replies[0].number
    assert [r.number for r in replies] == [base, base + 1, base + 2]
    assert replies[1].name == f".{base + 1}" and replies[1].hostname == f"n{base + 1}"
    assert replies[1].address == f"10.54.0.{10 + base + 1}"
    assert link(master, MACS[1].upper(), "stage2").register().number == base + 1


def test_logs_arrive_tagged_with_mac_and_stage(master):
    lk = link(master, MACS[0], "stage2")
    lk.register()
    logger = logging.getLogger("test.node0")
    logger.propagate = False
    logger.addHandler(lk.log_handler())
    logger.setLevel(logging.INFO)
    for i in range(3):
        logger.info("line %d from the node", i)
    logger.warning("last one")
    assert lk.flush(force=True) and lk.pending() == (0, 0)
    found = master.wait_for_log(rf"node: \S+ {MACS[0]} stage2 WARNING test.node0: last one")
    assert f"{MACS[0]} stage2 INFO test.node0: line 2 from the node" in master.log_text()
    assert found


def test_events_make_a_timeline_and_ready_means_up(master):
    lk = link(master, MACS[3], "stage1")
    lk.event(p.BootEvent.STAGE1_START)  # not registered yet: buffered, sent after registration
    assert lk.pending() == (1, 0)
    number = lk.register().number
    lk.event("kexec")
    for stage, events in [("stage2", ["stage2_start", "dhcp", "download", "switch"]), ("stage3", ["stage3_ready"])]:
        lk.stage = Stage(stage)
        assert lk.register().boot == 1  # a later stage continues the boot
        for name in events:
            lk.event(name)
    timeline = p.from_json(p.Timeline, requests.get(master.url + p.TIMELINE_PATH.format(node=f"n{number}")).content)
    assert [e.event for e in timeline.entries] == [
        "stage1_start",
        "kexec",
        "stage2_start",
        "dhcp",
        "download",
        "switch",
        "stage3_ready",
    ]
    assert timeline.boot == 1 and all(a.t <= b.t for a, b in zip(timeline.entries, timeline.entries[1:]))
    assert lk.heartbeat(5.0).state is p.NodeState.UP


def test_bad_message_is_400_naming_the_field(master):
    response = requests.post(master.url + p.HEARTBEAT_PATH, data='{"mac": "52:54:00:00:00:01", "stage": "s9"}')
    assert response.status_code == 400 and "Heartbeat.stage" in response.json()["error"]
    lk = link(master, MACS[0])
    lk.register()
    with pytest.raises(p.ProtocolError, match="not allowed"):
        lk.event("Not An Event")


def test_unknown_node_heartbeat_reregisters(master):
    lk = link(master, "52:54:00:00:02:01", "stage3")
    lk.registration = p.RegisterReply(99, ".99", "n99", None, 1, 5.0, 30.0)  # as if the master forgot us
    reply = lk.heartbeat(1.0)
    assert reply is not None and lk.registration.number == reply.number != 99


def test_unreachable_master_retries_then_gives_up():
    sleeps = []
    lk = MasterLink("http://127.0.0.1:9", MACS[0], "stage1", timeout=0.5, sleep=sleeps.append)
    with pytest.raises(MasterLinkError, match="unreachable after 4 tries"):
        lk.register(attempts=4)
    assert len(sleeps) == 3 and all(0.75 * 0.5 * 2**i <= s <= 1.25 * 0.5 * 2**i for i, s in enumerate(sleeps))
    assert lk.heartbeat() is None
    lk.event("stage1_start")  # buffered, nothing raised
    assert lk.pending() == (1, 0)


def test_bpstat_table_json_and_svg(master, tmp_path):
    from beoboot.master.cli import bpstat_main

    lk = link(master, MACS[2], "stage3")
    lk.register()
    lk.event("stage3_ready")
    import contextlib
    import io
    import json
    import xml.etree.ElementTree as ET

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bpstat_main(["--master", master.url]) == 0
    assert MACS[2] in out.getvalue() and "address" in out.getvalue().splitlines()[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bpstat_main(["--master", master.url, "--json"]) == 0
    rows = {row["mac"]: row for row in json.loads(out.getvalue())}
    assert rows[MACS[2]]["state"] == "up" and rows[MACS[2]]["stage"] == "stage3"
    svg = tmp_path / "boot.svg"
    assert bpstat_main(["--master", master.url, "--timeline", MACS[3], "--svg", str(svg)]) == 0
    ET.parse(svg)
    assert bpstat_main(["--master", master.url, "--timeline", "n999"]) == 1


# --- boot files ------------------------------------------------------------------------------------------


def test_range_and_if_range(master, boot_tree):
    url = master.url + p.BOOT_PREFIX + "stage3.cpio"
    data = (boot_tree / "stage3.cpio").read_bytes()
    whole = requests.get(url)
    assert whole.status_code == 200 and whole.content == data
    etag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    part = requests.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    same = requests.get(url, headers={"Range": "bytes=1000-", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[1000:]
    stale = requests.get(url, headers={"Range": "bytes=1000-", "If-Range": '"0-0"'})
    assert stale.status_code == 200 and stale.content == data  # rebuilt meanwhile: the whole file
    by_date = requests.get(url, headers={"Range": "bytes=5-", "If-Range": modified})
    assert by_date.status_code == 206 and by_date.content == data[5:]
    old_date = email.utils.formatdate(time.time() - 86400, usegmt=True)
    assert requests.get(url, headers={"Range": "bytes=5-", "If-Range": old_date}).status_code == 200
    assert requests.get(master.url + p.BOOT_PREFIX + "sub/vmlinuz").content == b"kernel"


@pytest.mark.parametrize("path", ["../nodes.db", "sub", "missing", "sub/../../x", "%2e%2e/etc/passwd"])
def test_nothing_outside_the_tree(master, path):
    assert requests.get(master.url + p.BOOT_PREFIX + path).status_code == 404


class BreakOnce(Connection):
    """A connection whose first download breaks after 1 MiB, as a dropped link would."""

    def __init__(self) -> None:
        super().__init__(timeout=20)
        self.broke = False
        self.requests_seen: list = []

    @contextlib.contextmanager
    def stream(self, method, url, *, body=None, headers=None):
        with super().stream(method, url, body=body, headers=headers) as response:
            self.requests_seen.append((response.status, (headers or {}).get("Range")))
            if not self.broke:
                self.broke = True
                chunks = response.chunks

                def broken(size, limit=None):
                    yield next(chunks(1 << 20, limit))
                    raise HttpError("link dropped")

                response.chunks = broken
            yield response


def test_download_resumes_after_a_broken_link(master, boot_tree, tmp_path):
    connection = BreakOnce()
    data = (boot_tree / "stage3.cpio").read_bytes()
    dest = tmp_path / "stage3.cpio"
    fetch(
        master.url + p.BOOT_PREFIX + "stage3.cpio",
        str(dest),
        hashlib.sha256(data).hexdigest(),
        connection=connection,
        sleep=lambda s: None,
        log=lambda line: None,
        attempts=3,
    )
    assert dest.read_bytes() == data
    assert connection.requests_seen == [(200, None), (206, f"bytes={1 << 20}-")]


# --- signals, restarts, timeouts -------------------------------------------------------------------------


@pytest.fixture
def own_master(boot_tree, tmp_path):
    config = tmp_path / "beoserv.toml"
    config.write_text(
        'first_node_address = "10.54.0.10"\nheartbeat_interval = 0.1\nheartbeat_timeout = 0.6\nreap_interval = 0.05\n'
    )
    server = MasterProcess(boot_tree, tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    yield server
    server.stop()


def test_numbers_survive_a_master_restart(own_master):
    numbers = [link(own_master, mac).register().number for mac in MACS]
    assert numbers == [0, 1, 2, 3]
    own_master.stop()
    own_master.start()
    assert [link(own_master, mac).register().number for mac in reversed(MACS)] == [3, 2, 1, 0]
    assert link(own_master, "52:54:00:00:03:00").register().number == 4


def test_silent_node_goes_down_and_comes_back(own_master):
    lk = link(own_master, MACS[0], "stage3")
    lk.register()
    lk.event("stage3_ready")
    own_master.wait_for_log(r"node 0 \(52:54:00:00:01:00\) down: no heartbeat for 0\.6s", timeout=3)
    nodes = p.from_json(p.NodeList, requests.get(own_master.url + p.NODES_PATH).content)
    assert nodes.nodes[0].state is p.NodeState.DOWN
    assert lk.heartbeat(1.0).state is p.NodeState.UP
    events = [
        e.event
        for e in p.from_json(
            p.Timeline, requests.get(own_master.url + p.TIMELINE_PATH.format(node="0")).content
        ).entries
    ]
    assert events == ["stage3_ready", "heartbeat_lost"]


def test_heartbeat_thread_keeps_a_node_up(own_master):
    lk = link(own_master, MACS[1], "stage3")
    lk.register()
    lk.event("stage3_ready")
    lk.run_heartbeats(lambda: 1.0)
    time.sleep(1.2)
    lk.stop()
    assert "down" not in own_master.log_text()
    assert requests.get(own_master.url + p.NODES_PATH).json()["nodes"][0]["state"] == "up"


def test_sighup_rereads_config_and_keeps_it_when_broken(own_master):
    assert link(own_master, MACS[0]).register().address == "10.54.0.10"
    own_master.config.write_text('first_node_address = "10.99.0.1"\nheartbeat_interval = 1\nheartbeat_timeout = 5\n')
    own_master.signal(signal.SIGHUP)
    own_master.wait_for_log("config reloaded")
    assert link(own_master, MACS[0]).register().address == "10.99.0.1"
    own_master.config.write_text("heartbeat_interval = 10\nheartbeat_timeout = 5\n")
    own_master.signal(signal.SIGHUP)
    own_master.wait_for_log("config not reloaded, keeping the running one: .*must exceed")
    assert link(own_master, MACS[0]).register().address == "10.99.0.1"


def test_sigusr1_dumps_state(own_master):
    link(own_master, MACS[0]).register()
    for _ in range(4):
        assert requests.get(own_master.url + p.BOOT_PREFIX + "stage3.cpio", timeout=10).status_code == 200
    own_master.signal(signal.SIGUSR1)
    found = own_master.wait_for_log(r"state: pid=\d+ .* nodes=1 \(booting=1 up=0 down=0\) open_fds=(\d+) rss_kib=(\d+)")
    assert int(found.group(1)) > 0 and int(found.group(2)) > 1000
    rates = own_master.wait_for_log(
        r"state: last 10s: ([\d.]+) requests/s, ([\d.]+) MiB/s sent; transfers: 0 under way \(max 64\), 0 waiting, "
        r"0 told to retry since start; log lines dropped: 0"
    )
    assert float(rates.group(1)) > 0 and float(rates.group(2)) > 0  # four 3 MiB files within the window
    own_master.wait_for_log(r"state: node 0 52:54:00:00:01:00 booting stage1 boot=1")
    status = p.from_json(p.ServerStatus, requests.get(own_master.url + p.STATUS_PATH, timeout=5).content)
    assert status.requests_per_s > 0 and status.bytes_per_s >= 4 * (3 << 20) / 10
    assert (status.transfers_active, status.transfers_waiting, status.states["booting"]) == (0, 0, 1)


def test_logs_are_stored_in_the_registry(own_master):
    """Written by beoserv's writer thread within its interval (beoboot.master.writebehind), not before the
    node is answered."""
    lk = link(own_master, MACS[0], "stage2")
    lk.register()
    lk.queue_log("INFO", "stored line")
    lk.flush(force=True)
    db = sqlite3.connect(own_master.db)
    deadline = time.monotonic() + 5 * INTERVAL
    while (stored := db.execute("SELECT stage, level, message FROM logs").fetchall()) == []:
        assert time.monotonic() < deadline
        time.sleep(INTERVAL / 4)
    assert stored == [("stage2", "INFO", "stored line")]


def published(lk, table: str) -> int:
    """The version of the host table once beoserv publishes `table` (within HOSTS_DELAY of the change), as
    the node's heartbeats tell it, and as GET /hosts gives it."""
    deadline = time.monotonic() + 5
    while (version := lk.heartbeat().hosts_version) != zlib.crc32(table.encode()):
        assert time.monotonic() < deadline, (lk.hosts(), table)
        time.sleep(0.05)
    assert lk.hosts() == table
    return version


def test_host_table_names_every_node_with_an_address_and_heartbeats_say_when_it_changed(boot_tree, tmp_path):
    """Without an address plan the table takes the addresses nodes report; with one, the plan's. A node
    fetches the table only when a heartbeat reply carries a new version."""
    config = tmp_path / "beoserv.toml"
    config.write_text("")  # no address plan
    server = MasterProcess(boot_tree, tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    try:
        first, second = link(server, MACS[0], "stage3"), link(server, MACS[1], "stage3")
        first.address = "10.0.2.15/24"
        first.register()
        version = published(first, "10.0.2.15 n0 .0\n")
        second.address = "not an address"  # a node's word goes into every node's /etc/hosts: checked
        second.register()
        time.sleep(HOSTS_DELAY * 2)
        assert first.hosts() == "10.0.2.15 n0 .0\n" and first.heartbeat().hosts_version == version
        second.address = "10.0.2.16"
        second.register()
        version = published(first, "10.0.2.15 n0 .0\n10.0.2.16 n1 .1\n")
        second.address = "10.0.2.40/24"  # a new DHCP lease moved it: said by heartbeat, no new registration
        second.heartbeat()
        published(second, "10.0.2.15 n0 .0\n10.0.2.40 n1 .1\n")
        rows = requests.get(server.url + p.NODES_PATH, timeout=5).json()["nodes"]
        assert [row["address"] for row in rows] == ["10.0.2.15", "10.0.2.40"]  # bpstat shows them too
        server.wait_for_log(r"node 1 \(\S+\) now at 10\.0\.2\.40: its DHCP lease moved it")
        config.write_text('first_node_address = "10.54.0.10"\nhostname_prefix = "node"\n')
        server.signal(signal.SIGHUP)
        server.wait_for_log("config reloaded")
        assert first.hosts() == "10.54.0.10 node0 .0\n10.54.0.11 node1 .1\n"  # the plan wins, at once
    finally:
        server.stop()


def test_a_node_that_has_the_host_table_gets_304(boot_tree, tmp_path):
    server = MasterProcess(boot_tree, tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    try:
        lk = link(server, MACS[0], "stage3")
        lk.address = "10.0.2.15"
        lk.register()
        version = published(lk, "10.0.2.15 n0 .0\n")
        whole = requests.get(server.url + p.HOSTS_PATH, timeout=5)
        assert whole.headers["ETag"] == f'"{version:08x}"' and whole.headers["X-Beoboot-Hosts-Version"] == str(version)
        again = requests.get(server.url + p.HOSTS_PATH, headers={"If-None-Match": whole.headers["ETag"]}, timeout=5)
        assert again.status_code == 304 and again.content == b""
        stale = requests.get(server.url + p.HOSTS_PATH, headers={"If-None-Match": '"00000000"'}, timeout=5)
        assert stale.status_code == 200 and stale.text == "10.0.2.15 n0 .0\n"
    finally:
        server.stop()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="the resolver check mounts over /etc/hosts"
)
def test_the_master_resolves_node_names_from_the_block_beoserv_keeps_in_its_hosts_file(boot_tree, tmp_path):
    """hosts_file: beoserv writes the host table into the file just after each registration, keeping the
    administrator's lines, and glibc's own resolver (getent, in a mount namespace where the file is
    /etc/hosts) then finds the nodes by both names."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.0.2.2 head\n")
    config = tmp_path / "beoserv.toml"
    config.write_text(f'hosts_file = "{hosts}"\n')
    server = MasterProcess(boot_tree, tmp_path / "nodes.db", tmp_path / "beoserv.log", config).start()
    try:
        node = link(server, MACS[2], "stage3")
        node.address = "10.0.2.15/24"
        node.register()  # no heartbeat needed: the registration itself rewrites the block
        server.wait_for_log(r"hosts file .*: the nodes' block now names 1 nodes")
        assert hosts.read_text().startswith("127.0.0.1 localhost\n10.0.2.2 head\n# beoboot nodes: begin")
        resolve = f"mount --bind {hosts} /etc/hosts && getent hosts n0 .0 head"
        found = subprocess.run(["unshare", "--mount", "sh", "-c", resolve], capture_output=True, text=True)
        assert found.stdout.split() == ["10.0.2.15", "n0", ".0", "10.0.2.15", "n0", ".0", "10.0.2.2", "head"], found
        config.write_text(f'hosts_file = "{hosts}"\nfirst_node_address = "10.54.0.10"\n')
        mark = len(server.log_text())
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"hosts file .*: the nodes' block now names 1 nodes", after=mark)
        assert "\n10.54.0.10 n0 .0\n# beoboot nodes: end\n" in hosts.read_text()  # the plan, at once
    finally:
        server.stop()
    restarted = MasterProcess(boot_tree, tmp_path / "nodes.db", tmp_path / "beoserv2.log", config)
    hosts.write_text("127.0.0.1 localhost\n")  # an administrator rewrote the file while beoserv was down
    restarted.start()
    try:
        restarted.wait_for_log(r"hosts file .*: the nodes' block now names 1 nodes")  # from the registry
        assert hosts.read_text().endswith("10.54.0.10 n0 .0\n# beoboot nodes: end\n")
    finally:
        restarted.stop()
