"""The real beoserv in a child process against hostile and broken clients: bad input is a 4xx with a JSON
error, never a 500 or a traceback in the log; node text cannot forge a line of beoserv's log or bpstat's
terminal; a client that drops or trickles is one log line and is cut off; registration does not slow as
the registry grows."""

import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time

import pytest
import requests
from master_helpers import MasterProcess, bpsh_argv, publish_files, start_simnodes

from agent import protocol as p
from agent.download import Backoff
from agent.masterlink import MasterBusy, MasterLink
from agent.schema import Stage
from beoboot.master.registry import Registry
from beoboot.master.server import BODY_BUDGET
from stage3.wsclient import OP_BINARY, OP_TEXT, WebSocket, WebSocketError

MAC = "52:54:00:00:07:01"
REQUEST_TIMEOUT = 1.5  # the masters' request_timeout here: short, so that trickling clients are cut off soon
BEYOND_SQLITE = "9" * 30


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    (work / "boot").mkdir()
    publish_files(work / "boot", {"stage3.cpio": os.urandom(4 << 20)})
    config = work / "beoserv.toml"
    config.write_text(f"request_timeout = {REQUEST_TIMEOUT}\n")
    server = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log", config).start()
    registered = requests.post(server.url + p.REGISTER_PATH, json={"mac": MAC, "stage": "stage1"}, timeout=5)
    registered.raise_for_status()
    server.token = registered.json()["link_token"]  # what the node's own messages carry
    yield server
    server.stop()


def address(master):
    host, port = master.url.removeprefix("http://").split(":")
    return host, int(port)


def no_traceback(master, mark=0):
    log = master.log_text()[mark:]
    assert "Traceback" not in log, log


def body(**fields):
    return json.dumps({"mac": MAC, **fields})


def raw(text):
    """A body as a hostile node writes it: JSON that json.dumps would not write."""
    return text.replace("MAC", MAC)


# (method, path, body, status, what the error says)
HOSTILE = [
    ("GET", "/a%00b", None, 400, "control character"),
    ("GET", "/api/v1/nodes/%00/timeline", None, 400, "control character"),
    ("GET", "/api/v1/nodes/0/timeline?boot=%00", None, 400, "must be a boot number"),
    ("GET", "/" + "a" * 300, None, 404, "longer than 255 bytes"),
    ("GET", "/sub/" + "é" * 200, None, 404, "longer than 255 bytes"),
    ("GET", "/api/v1/nodes/" + "a" * 300 + "/timeline", None, 404, "longer than 255 bytes"),
    ("GET", f"/api/v1/nodes/{BEYOND_SQLITE}/timeline", None, 404, f"no node '{BEYOND_SQLITE}'"),
    ("GET", f"/api/v1/nodes/n{BEYOND_SQLITE}/timeline", None, 404, "no node"),
    ("GET", "/api/v1/nodes/n%C2%B2/timeline", None, 404, "no node"),  # "²" is a digit to str.isdigit
    ("GET", f"/api/v1/nodes/0/timeline?boot={BEYOND_SQLITE}", None, 400, "must be a boot number"),
    ("GET", "/api/v1/nodes/0/timeline?boot=%C2%B2", None, 400, "must be a boot number"),
    ("POST", p.REGISTER_PATH, "[" * 100_000 + "]" * 100_000, 400, "nested deeper than"),
    (
        "POST",
        p.REGISTER_PATH,
        '{"mac": "MAC", "stage": "stage1", "hardware": {"cpus": 1' + "0" * 400 + "}}",
        400,
        "RegisterRequest.hardware.cpus",
    ),
    (
        "POST",
        p.HEARTBEAT_PATH,
        raw('{"mac": "MAC", "stage": "stage1", "uptime": 1' + "0" * 400 + "}"),
        400,
        "Heartbeat.uptime: .*401 digits",
    ),
    (
        "POST",
        p.HEARTBEAT_PATH,
        raw('{"mac": "MAC", "stage": "stage1", "uptime": -Infinity}'),
        400,
        "Heartbeat.uptime: .*-Infinity",
    ),
    ("POST", p.LOGS_PATH, raw('{"mac": "MAC", "sent_mono": NaN, "lines": []}'), 400, "LogBatch.sent_mono: .*NaN"),
    (
        "POST",
        p.EVENTS_PATH,
        raw('{"mac": "MAC", "sent_mono": 1, "events": [{"name": "dhcp", "mono": 1e999, "stage": "stage2"}]}'),
        400,
        r"EventBatch.events\[0\].mono",
    ),
    (
        "POST",
        p.LOGS_PATH,
        raw('{"mac": "MAC", "sent_mono": 1, "lines": [], "dropped": ' + BEYOND_SQLITE + "}"),
        400,
        "LogBatch.dropped: .*beyond 64 bits",
    ),
    (
        "POST",
        p.LOGS_PATH,
        raw(
            '{"mac": "MAC", "sent_mono": 1, "lines": [{"mono": 1, "stage": "stage2", '
            '"level": "\\udc00", "message": ""}]}'
        ),
        400,
        "lone surrogate",
    ),
    ("POST", p.REGISTER_PATH, "x" * (2 << 20), 413, "larger than"),
]


@pytest.mark.parametrize("method, path, data, status, complaint", HOSTILE)
def test_hostile_requests_are_a_4xx_with_a_json_error_and_no_traceback(master, method, path, data, status, complaint):
    mark = len(master.log_text())
    response = requests.request(method, master.url + path, data=data, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert re.search(complaint, response.json()["error"]), response.text
    no_traceback(master, mark)


def test_malformed_http_is_one_line_in_the_log(master):
    """What aiohttp refuses before beoserv sees a request (a 10 KB header, a broken chunk) is a 400 and
    one warning, not a traceback."""
    mark = len(master.log_text())
    for request in (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10_000 + b"\r\n\r\n",
        b"POST /api/v1/logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        with socket.create_connection(address(master), timeout=5) as conn:
            conn.sendall(request)
            assert conn.recv(100).startswith(b"HTTP/1.0 400")
    master.wait_for_log("Invalid character in chunk size", after=mark)
    assert "Traceback" not in master.log_text()[mark:]


# --- node text in the log and on the terminal -----------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 beoserv: WARNING node 9 (52:54:00:00:00:09) down: forged"


def test_node_text_cannot_forge_a_line_in_beoservs_log_or_on_bpstats_terminal(master):
    mark = len(master.log_text())
    lines = [{"mono": 1, "stage": "stage2", "level": "INFO\n" + FORGED, "message": f"one\n{FORGED}\r\x1b[2J\u2028"}]
    events = [{"name": "dhcp", "mono": 1, "stage": "stage2", "detail": f"lease\n{FORGED}\x1b]0;title\x07"}]
    for path, message in (
        (p.LOGS_PATH, {"sent_mono": 2, "lines": lines}),
        (p.EVENTS_PATH, {"sent_mono": 2, "events": events}),
    ):
        response = requests.post(
            master.url + path,
            data=json.dumps({"mac": f" {MAC}\n", **message}),
            timeout=5,
            headers={p.LINK_TOKEN_HEADER: master.token},
        )
        assert response.status_code == 200, response.text
    master.wait_for_log(r"dhcp lease\\n", after=mark)
    log = master.log_text()[mark:]
    assert not any(line.startswith(FORGED) for line in log.splitlines()), log
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log
    assert f"one\\n{FORGED}\\r\\x1b[2J\\u2028" in log  # escaped, as a repr would, not dropped
    shown = subprocess.run(
        [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", master.url, "--timeline", MAC],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        "\x1b" not in shown.stdout
        and "\x07" not in shown.stdout
        and f"lease\\n{FORGED}\\x1b]0;title\\x07" in shown.stdout
    )
    assert not any(line.startswith(FORGED) for line in shown.stdout.splitlines())


def test_printable_escapes_every_character_that_breaks_a_line_or_reorders_it():
    """Every control character, line or paragraph separator, lone surrogate and Unicode Bidi_Control
    character (PropList.txt: U+061C, U+200E-200F, U+202A-202E, U+2066-2069) is escaped. U+061C, the
    Arabic letter mark, reorders what follows as U+200F does, and went through."""
    import unicodedata

    from beoboot.master.printable import printable

    bidi_control = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    breaking = [c for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp", "Cs")]
    for code in bidi_control + breaking:
        shown = printable(f"a{chr(code)}b")
        assert shown.isascii() and shown.isprintable(), (hex(code), shown)


# --- clients that drop or trickle ------------------------------------------------------------------------


def test_a_client_that_drops_mid_body_is_one_line(master):
    mark = len(master.log_text())
    head = f"POST {p.LOGS_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    with socket.create_connection(address(master), timeout=5) as conn:
        conn.sendall(head + b'{"mac": ')
        time.sleep(0.3)
    master.wait_for_log("the client went away", after=mark)
    time.sleep(0.3)
    said = master.log_text()[mark:]
    assert len(said.splitlines()) == 1 and "Traceback" not in said, said


def trickle(master, data, interval=0.2, at_once=b""):
    """Send `at_once`, then `data` a byte at a time; returns (seconds until the server answered or closed,
    its answer)."""
    started = time.monotonic()
    with socket.create_connection(address(master), timeout=10) as conn:
        conn.sendall(at_once)
        conn.setblocking(False)
        for byte in data:
            try:
                answer = conn.recv(200)
                return time.monotonic() - started, answer
            except BlockingIOError:
                pass
            try:
                conn.send(bytes([byte]))
            except OSError:
                return time.monotonic() - started, b""
            time.sleep(interval)
        conn.settimeout(10)
        return time.monotonic() - started, conn.recv(200)


def test_a_request_head_sent_byte_by_byte_is_cut_off(master):
    head = b"GET /stage3.cpio HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"  # 25 s at this pace
    took, answer = trickle(master, head)
    assert answer == b"" and took < REQUEST_TIMEOUT + 2.5


def test_a_body_sent_byte_by_byte_is_408_and_cut_off(master):
    mark = len(master.log_text())
    data = body(stage="stage1").encode() + b" " * 100
    head = f"POST {p.HEARTBEAT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    took, answer = trickle(master, data, interval=0.05, at_once=head)  # 7 s at this pace
    assert answer.startswith(b"HTTP/1.1 408") and took < REQUEST_TIMEOUT + 2.5, answer
    no_traceback(master, mark)


def test_a_slow_reader_downloads_the_whole_image(master):
    """request_timeout bounds what the client sends, not how long a download takes."""
    expected = (master.root / "stage3.cpio").read_bytes()
    with socket.create_connection(address(master), timeout=10) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        conn.sendall(b"GET /stage3.cpio HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started, received = time.monotonic(), bytearray()
        while chunk := conn.recv(256 << 10):
            received += chunk
            time.sleep(0.05)
    assert time.monotonic() - started > 2 * REQUEST_TIMEOUT
    assert received.endswith(expected) and b" 200 OK" in received[:20]


@pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")
def test_a_job_link_outlives_the_request_timeout(master, tmp_path):
    sim = start_simnodes(master.url, tmp_path)
    try:
        nodes = requests.get(master.url + p.NODES_PATH, timeout=5).json()["nodes"]
        (number,) = [row["number"] for row in nodes if row["state"] == "up"]
        mark = len(master.log_text())
        time.sleep(2 * REQUEST_TIMEOUT)  # the link idles longer than any request may take to arrive
        ran = subprocess.run(
            bpsh_argv(master.bpsh_socket, str(number), "echo", "still linked"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.stdout == "still linked\n", ran.stderr
        assert "job link down" not in master.log_text()[mark:]
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)


def test_an_unexpected_failure_is_a_500_and_one_log_line(master):
    """The last resort, shown with a real failure no handler expects: the registry locked by another
    program (an administrator's sqlite3 shell) for longer than SQLite waits."""
    mark = len(master.log_text())
    holder = sqlite3.connect(master.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        response = requests.post(master.url + p.REGISTER_PATH, data=body(stage="stage1"), timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 500 and "OperationalError" in response.json()["error"]
    said = master.wait_for_log(
        r"POST /api/v1/register from \S+ failed: OperationalError: database is locked\n", after=mark
    )
    assert said and "Traceback" not in master.log_text()[mark:]


# --- registration at scale -------------------------------------------------------------------------------


def registration_times(master, first, count):
    """Seconds each of `count` registrations of new nodes took, one client, one kept connection."""
    times = []
    with requests.Session() as session:
        for i in range(first, first + count):
            message = {
                "mac": f"52:54:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                "stage": "stage1",
                "address": f"10.9.{i >> 8 & 255}.{i & 255}",
            }
            started = time.perf_counter()
            session.post(master.url + p.REGISTER_PATH, json=message, timeout=60).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def test_registration_does_not_slow_as_the_registry_grows(tmp_path):
    """100 registrations into an empty registry, then 100 more once it holds 3,000 nodes (each with an
    address, so in the host table and the hosts file): the later ones take at most twice as long."""
    (tmp_path / "boot").mkdir()
    config = tmp_path / "beoserv.toml"
    config.write_text(f'first_node_address = "10.54.0.10"\nhosts_file = "{tmp_path / "hosts"}"\n')
    db = tmp_path / "nodes.db"
    master = MasterProcess(tmp_path / "boot", db, tmp_path / "beoserv.log", config).start()
    try:
        early = registration_times(master, 0, 100)
    finally:
        master.stop()
    registry = Registry(db)
    hardware = p.Hardware("cpu", 8, 1 << 24, (p.PciDevice("0000:00:03.0", "0x8086", "0x100e", "0x020000", "e1000"),))
    for i in range(100, 3100):
        registry.register(f"52:54:01:00:{i >> 8:02x}:{i & 255:02x}", Stage.SUPERVISOR, hardware, time.time())
    registry.close()
    master = MasterProcess(tmp_path / "boot", db, tmp_path / "beoserv2.log", config).start()
    try:
        late = registration_times(master, 3100, 100)
    finally:
        master.stop()
    first, last = statistics.median(early), statistics.median(late)
    print(f"median registration: {first * 1000:.2f} ms at 0-100 nodes, {last * 1000:.2f} ms at 3,100-3,200")
    assert last <= 2 * first, (first, last)


# --- the job link ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opcode, frame, said",
    [
        (OP_TEXT, b'{"type": "JobExit", "body": {"job": 1, "status": NaN}}', "JobExit.status: .*NaN"),
        (OP_TEXT, b"[" * 5000 + b"]" * 5000, "nested deeper than"),
        (OP_BINARY, b"\x01", "an output frame of 1 bytes"),
    ],
)
def test_a_frame_no_node_sends_closes_its_link_with_one_line(master, opcode, frame, said):
    reply = p.from_json(
        p.RegisterReply, requests.post(master.url + p.REGISTER_PATH, data=body(stage="stage3"), timeout=5).content
    )
    mark = len(master.log_text())
    link = WebSocket.connect(
        f"{master.url}{p.JOBS_LINK_PATH}?mac={MAC}", headers={p.LINK_TOKEN_HEADER: reply.link_token}
    )
    try:
        master.wait_for_log("job link up", after=mark)
        link._send(opcode, frame)
        with pytest.raises(WebSocketError, match="closed by the peer"):
            link.recv()
    finally:
        link.close()
    master.wait_for_log(rf"node {reply.number} \({MAC}\) job link closed: it sent .*{said}", after=mark)
    master.wait_for_log("job link down", after=mark)
    no_traceback(master, mark)


def test_bodies_held_at_once_are_bounded_and_the_rest_told_to_retry(tmp_path):
    """Unanswered bodies cost memory until they are whole: clients that each announce 1 MiB and send it
    slowly could make beoserv grow without bound. Past the budget a request is a 503 with Retry-After (an
    exhausted resource, not a bad request), logged once, and the budget comes back as the bodies end."""
    (tmp_path / "boot").mkdir()
    server = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    slow = []
    try:
        head = f"POST {p.LOGS_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {1 << 20}\r\n\r\n{{".encode()
        for _ in range(BODY_BUDGET >> 20):
            conn = socket.create_connection(address(server), timeout=10)
            conn.sendall(head)
            slow.append(conn)
        time.sleep(0.5)  # beoserv has taken every one of them
        refused = requests.post(server.url + p.REGISTER_PATH, json={"mac": MAC, "stage": "stage1"}, timeout=5)
        assert refused.status_code == 503 and 1 <= int(refused.headers["Retry-After"]) <= 5, refused.text
        assert "retry shortly" in refused.json()["error"]
        sleeps: list[float] = []  # the agent waits at least what it was told, and says the master is busy
        link = MasterLink(server.url, MAC, Stage.SUPERVISOR, backoff=Backoff(first=0.01), sleep=sleeps.append)
        with pytest.raises(MasterBusy, match="retry shortly"):
            link.register(attempts=2)
        assert len(sleeps) == 1 and sleeps[0] >= 1
        assert server.log_text().count("request bodies in memory reached") == 1
        for conn in slow:
            conn.close()
        deadline = time.monotonic() + 10
        while (
            answer := requests.post(server.url + p.REGISTER_PATH, json={"mac": MAC, "stage": "stage1"}, timeout=5)
        ).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert "Traceback" not in server.log_text()
    finally:
        for conn in slow:
            conn.close()
        server.stop()
