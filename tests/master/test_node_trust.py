"""Only booted nodes are nodes: who may register, which objects a node's token fetches, which nodes get
jobs. The real beoserv, simulated nodes, bpsh, and an impostor running as nobody on the master."""

import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from master_helpers import bpsh_argv, running_job, simulated_cluster

from agent import protocol as p
from agent.schema import Stage

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534

# A process that is not a node: registers a MAC, says it is up, opens the job link and reports the first
# frame it is sent. One JSON line per step on stdout.
IMPOSTOR = r"""
import json, sys, time, urllib.error, urllib.request
from agent import protocol as p
from agent.schema import Stage
from stage3.wsclient import WebSocket

url, mac, ready = sys.argv[1], sys.argv[2], sys.argv[3] == "ready"
body = p.to_json(p.RegisterRequest(mac, Stage.SUPERVISOR, p.Hardware(cpu_model="impostor", cpus=1), "0"))
request = urllib.request.Request(url + p.REGISTER_PATH, body.encode(), {"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        reply = p.from_json(p.RegisterReply, response.read())
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode()}), flush=True)
    sys.exit(0)
if ready:
    events = p.EventBatch(mac, time.monotonic(), (p.StageEvent("stage3_ready", time.monotonic(), Stage.SUPERVISOR),))
    token = {p.LINK_TOKEN_HEADER: reply.link_token}
    urllib.request.urlopen(urllib.request.Request(url + p.EVENTS_PATH, p.to_json(events).encode(), token), timeout=10).read()
ws = WebSocket.connect(f"{url}{p.JOBS_LINK_PATH}?mac={mac}", headers={p.LINK_TOKEN_HEADER: reply.link_token})
print(json.dumps({"status": 200, "number": reply.number, "token": reply.link_token}), flush=True)
_, frame = ws.recv()
start = p.decode_frame(frame)
print(json.dumps({"job": list(start.manifest.argv), "files": len(start.manifest.files)}), flush=True)
"""


def impostor(url: str, mac: str, *, ready: bool = True, user: int | None = NOBODY) -> subprocess.Popen[str]:
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    # the system's python: the venv's may be under /root, where nobody cannot reach it
    return subprocess.Popen(
        ["/usr/bin/python3", "-c", IMPOSTOR, url, mac, "ready" if ready else "booting"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **ids,
    )


def first_line(process: subprocess.Popen[str]) -> dict:
    line = process.stdout.readline()
    assert line, process.stderr.read()
    return json.loads(line)


def bpsh(master, *args, timeout: float = 30):
    return subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=timeout)


def fetch(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={p.LINK_TOKEN_HEADER: token})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def token_of(master, number: int) -> str:
    with sqlite3.connect(master.db) as db:
        return db.execute("SELECT link_token FROM nodes WHERE number = ?", (number,)).fetchone()[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with simulated_cluster(tmp_path_factory.mktemp("trust"), nodes=2) as master:
        yield master


def test_nobody_on_the_master_cannot_register_and_gets_no_ones_jobs(cluster):
    """The finding: nobody registered a MAC from 127.0.0.1, was sent root's `bpsh -a` job, manifest and
    all, and root's bpsh hung waiting for it. Now the registration is refused and names why."""
    fake = impostor(cluster.url, "02:66:66:00:00:10")
    try:
        answer = first_line(fake)
        result = bpsh(cluster, "-a", "/bin/true", timeout=20)  # before: sent to the impostor too, and hung
        assert result.returncode == 0, result.stderr
        assert answer["status"] == 403, answer
        error = json.loads(answer["body"])["error"]
        assert f"uid {NOBODY}" in error and "only root's processes on the master may register" in error
    finally:
        fake.kill()
        fake.wait()
    assert "02:66:66:00:00:10" not in json.dumps(json.loads(urllib.request.urlopen(cluster.url + p.NODES_PATH).read()))


def test_a_nodes_token_fetches_only_the_objects_of_its_own_live_jobs(cluster, tmp_path):
    """A root-only file brought to node 1 for root's job: node 0's token cannot fetch it, node 1's can
    while the job runs, and not after it ended."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(64))
    secret.chmod(0o600)
    digest = __import__("hashlib").sha256(secret.read_bytes()).hexdigest()
    url = cluster.url + p.OBJECTS_PATH.format(digest=digest)
    job = running_job(cluster, "--cache", str(secret), "1", "sleep", "30")
    try:
        assert fetch(url, token_of(cluster, 0)) == 404
        assert fetch(url, token_of(cluster, 1)) == 200
    finally:
        job.terminate()
        job.wait(30)
    deadline = time.monotonic() + 10
    while fetch(url, token_of(cluster, 1)) != 404:
        assert time.monotonic() < deadline, "the object was still served after its job ended"
        time.sleep(0.1)


def test_a_node_that_never_reached_up_gets_no_job(cluster):
    """Registered (by root, so accepted) and linked, but never stage3_ready: `bpsh N` names it as not up,
    `bpsh -a` leaves it out, and neither waits for it."""
    booting = impostor(cluster.url, "02:66:66:00:00:20", ready=False, user=None)
    try:
        linked = first_line(booting)
        assert linked["status"] == 200, linked
        number = linked["number"]
        result = bpsh(cluster, str(number), "/bin/true", timeout=20)
        assert result.returncode == 127 and f"node {number} is not up (booting or silent)" in result.stderr
        result = bpsh(cluster, "-p", "-a", "echo", "hi", timeout=20)
        assert (result.returncode, sorted(result.stdout.splitlines())) == (0, ["0: hi", "1: hi"]), result.stderr
    finally:
        booting.kill()
        out, _ = booting.communicate()
    assert '"job"' not in out


def post_as(url: str, message: object, token: str | None) -> int:
    headers = {"Content-Type": "application/json", **({p.LINK_TOKEN_HEADER: token} if token is not None else {})}
    request = urllib.request.Request(url, p.to_json(message).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_nodes_heartbeats_events_and_log_lines_need_its_token(cluster):
    """Anyone who reaches the port could keep a dead node up with heartbeats, mark a booting one ready, or
    write lines into a node's log. Only the token of the node's latest registration counts: without it
    the answer is the unknown node's (the node itself would register again), and nothing is recorded."""
    mac = "02:be:0b:00:00:01"  # stage3.simnode's second node: node 1
    now = time.monotonic()
    forged_line = p.LogLine(now, Stage.SUPERVISOR, "INFO", "forged by someone without the token")
    messages = [
        (p.HEARTBEAT_PATH, p.Heartbeat(mac, Stage.SUPERVISOR, 1.0)),
        (p.EVENTS_PATH, p.EventBatch(mac, now, (p.StageEvent("stage3_ready", now, Stage.SUPERVISOR),))),
        (p.LOGS_PATH, p.LogBatch(mac, now, (forged_line,))),
    ]
    for path, message in messages:
        for token in (None, "", "0" * 32, token_of(cluster, 0)):
            assert post_as(cluster.url + path, message, token) == p.UNKNOWN_NODE_STATUS, (path, token)
    with sqlite3.connect(cluster.db) as db:
        assert not db.execute("SELECT 1 FROM logs WHERE message LIKE 'forged%'").fetchall()
    assert "forged by someone" not in cluster.log_text()
    for path, message in messages:  # the node's own token: accepted
        assert post_as(cluster.url + path, message, token_of(cluster, 1)) == 200, path


def test_the_socket_owner_is_the_kernels_answer(tmp_path):
    """sock_diag and /proc/net/tcp name the same owner: root for our own socket, nobody for nobody's;
    another port is no socket at all."""
    from beoboot.master import peers

    with __import__("socket").create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = f"import socket, time\nc = socket.create_connection(('127.0.0.1', {port}))\ntime.sleep(5)"
        for uid in (0, NOBODY):
            client = subprocess.Popen(["/usr/bin/python3", "-c", program], user=uid, group=uid, cwd="/")
            try:
                conn, peer = server.accept()
                ours = conn.getsockname()
                assert peers.owner_by_sock_diag(peer, ours) == peers.owner_from_proc(peer, ours) == uid
                assert peers.socket_owner((peer[0], peer[1] ^ 1), ours) is None
                conn.close()
            finally:
                client.kill()
                client.wait()


def test_the_proc_table_finds_an_ipv6_socket_at_a_v4_mapped_address():
    """Where sock_diag is missing, /proc/net stands in: a client's IPv6 socket connected to a dual-stack
    beoserv at ::ffff:127.0.0.1 is listed only in tcp6, and was not found (None: "no socket of this host"),
    so a user's socket on the master would be taken for another host's."""
    import socket

    from beoboot.master import peers

    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server:
        port = server.getsockname()[1]
        program = (
            f"import socket, time\nc = socket.socket(socket.AF_INET6)\n"
            f"c.connect(('::ffff:127.0.0.1', {port}))\ntime.sleep(5)"
        )
        client = subprocess.Popen(["/usr/bin/python3", "-c", program], user=NOBODY, group=NOBODY, cwd="/")
        try:
            conn, peer = server.accept()
            with conn:
                ours = conn.getsockname()
                assert peer[0] == "::ffff:127.0.0.1"
                assert (
                    peers.owner_from_proc(peer[:2], ours[:2]) == peers.owner_by_sock_diag(peer[:2], ours[:2]) == NOBODY
                )
        finally:
            client.kill()
            client.wait()


def _minisocket(peer: tuple[str, int]) -> bool:
    """/proc/net/tcp has the socket at `peer` with uid 0 and inode 0: the kernel's mini-socket that stands
    for a closed one once its FIN is acked (before that, the closed socket still shows its uid)."""
    local = f"{int.from_bytes(__import__('socket').inet_aton(peer[0]), 'little'):08X}:{peer[1]:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in list(table)[1:]]
    return any(row[1] == local and row[7] == "0" and row[9] == "0" for row in rows)


def test_a_socket_closed_before_the_lookup_vouches_for_no_one():
    """The finding: nobody sent a whole registration and closed at once. The kernel keeps a mini-socket
    for the closed one (FIN-WAIT-2), which sock_diag and /proc/net/tcp both report as uid 0: a beoserv
    slow to look (others' requests ahead of it) took it for root's and registered nobody's node. A socket
    no process holds now vouches for no one."""
    import socket

    from beoboot.master import admission, peers
    from beoboot.master.config import MasterConfig

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = f"import socket\nc = socket.create_connection(('127.0.0.1', {port}))\nc.sendall(b'x')\nc.close()"
        subprocess.run(["/usr/bin/python3", "-c", program], user=NOBODY, group=NOBODY, cwd="/", check=True)
        conn, peer = server.accept()
        with conn:
            ours = conn.getsockname()
            deadline = time.monotonic() + 5  # the FIN is acked within the delayed-ACK time (40-200 ms)
            while not _minisocket(peer):
                assert time.monotonic() < deadline, "the closed socket never became the kernel's mini-socket"
                time.sleep(0.02)
            with pytest.raises(admission.RegistrationRefused, match="its socket was closed"):
                admission.check(peer, ours, MasterConfig())  # before: accepted, as root's
            for lookup in (peers.owner_by_sock_diag, peers.owner_from_proc, peers.socket_owner):
                with pytest.raises(peers.PeerLookupError, match="its socket was closed"):
                    lookup(peer, ours)  # before: 0


def test_the_agent_not_allowed_a_reserved_port_still_registers_and_is_told_why(cluster):
    """The agent as nobody (a tool, a test) cannot bind a port below 1024: it sends from an ordinary one,
    and hears the master's reason, not a bind error."""
    program = (
        "import sys\nfrom agent.masterlink import MasterLink, RegistrationRefused\n"
        "try:\n    MasterLink(sys.argv[1], '02:66:66:00:00:40', 'stage3').register(attempts=1)\n"
        "except RegistrationRefused as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-c", program, cluster.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert result.returncode == 0, result.stderr
    assert f"a socket of uid {NOBODY} on the master" in result.stdout


def test_a_refused_registration_is_retried_with_backoff_and_logged_once(tmp_path):
    """local_nodes = "none": even root's simulated node is refused. The agent says why, backs off, and
    gives up after its attempts; beoserv logs the peer once, not once per try."""
    from master_helpers import MasterProcess

    from agent.download import Backoff
    from agent.masterlink import MasterLink, RegistrationRefused

    (tmp_path / "boot").mkdir()
    (tmp_path / "beoserv.toml").write_text('local_nodes = "none"\n')
    master = MasterProcess(
        tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log", config=tmp_path / "beoserv.toml"
    ).start()
    try:
        said, sleeps = [], []
        link = MasterLink(
            master.url,
            "02:66:66:00:00:30",
            Stage.SUPERVISOR,
            backoff=Backoff(first=0.5),
            sleep=sleeps.append,
            log=said.append,
        )
        with pytest.raises(RegistrationRefused, match='local_nodes = "none"'):
            link.register(attempts=4)
        assert len(sleeps) == 3 and sleeps[2] > sleeps[0] >= 0.375
        assert len(said) == 3 and all("refused the registration" in line and "local_nodes" in line for line in said)
        assert link.registration is None
        master.wait_for_log("registration refused")
        time.sleep(0.3)
        assert master.log_text().count("registration refused") == 1
    finally:
        master.stop()


def post_batch(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({p.LINK_TOKEN_HEADER: token} if token is not None else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_batch_of_small_objects_follows_the_same_rule(cluster, tmp_path):
    """OBJECTS_BATCH_PATH: node 1's token gets its job's small files in one answer, their bytes one after
    another in the order asked. Node 0's token, no token, or one digest not in the job refuses the whole
    batch, as one by one; a body that is not a batch is a 400, and a FIFO put in a file's place is not
    waited on."""
    files = [tmp_path / name for name in ("a", "b", "c", "d")]
    for size, path in zip((100, 3000, 1, 200_000), files):  # d makes the batch big enough to take a slot
        path.write_bytes(os.urandom(size))
        path.chmod(0o600)
    digests = [__import__("hashlib").sha256(path.read_bytes()).hexdigest() for path in files]
    url = cluster.url + p.OBJECTS_BATCH_PATH
    job = running_job(cluster, *(arg for path in files for arg in ("--cache", str(path))), "1", "sleep", "30")
    try:
        asked = p.to_json(p.ObjectBatch((digests[2], digests[0], digests[3], digests[1]))).encode()
        expected = b"".join(files[i].read_bytes() for i in (2, 0, 3, 1))
        assert post_batch(url, asked, token_of(cluster, 1)) == (200, expected)
        assert post_batch(url, asked, token_of(cluster, 0))[0] == 404
        assert post_batch(url, asked, None)[0] == 403
        stranger = p.to_json(p.ObjectBatch((digests[0], "0" * 64))).encode()
        assert post_batch(url, stranger, token_of(cluster, 1))[0] == 404
        for bad in (b'{"sha256": "x"}', b"[", p.to_json(p.ObjectBatch(("X" * 64,))).encode()):
            status, answer = post_batch(url, bad, token_of(cluster, 1))
            assert status == 400 and b"batch" in answer, (bad, answer)
        files[1].unlink()
        os.mkfifo(files[1])  # the file's stat key is gone with it: not served, and not opened
        assert post_batch(url, asked, token_of(cluster, 1))[0] == 404
    finally:
        job.terminate()
        job.wait(30)


def test_a_cold_jobs_small_files_come_in_one_request(cluster, tmp_path):
    """Forty small files brought to a node by --cache: its libcache asks for them in one batch, so the
    master answers a handful of requests (the batch, heartbeats), not forty."""
    files = []
    for index in range(40):
        path = tmp_path / f"small{index}"
        path.write_text(f"file {index}\n" * (10 + index))
        files.append(path)

    def requests() -> int:
        return json.loads(urllib.request.urlopen(cluster.url + p.STATUS_PATH).read())["requests"]

    before = requests()
    result = bpsh(cluster, *(arg for path in files for arg in ("--cache", str(path))), "1", "cat", str(files[7]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == files[7].read_text()
    assert requests() - before < 10
