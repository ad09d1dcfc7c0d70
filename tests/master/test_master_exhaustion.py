"""A beoserv out of descriptors: the real server under an open-files limit its clients exhaust. A request
that needs a file is told to retry (503, Retry-After), never that the file is not there (404) or that
beoserv failed (500); a connection that cannot be accepted waits in the backlog until descriptors free;
the log says so in a few lines, not one per attempt."""

from __future__ import annotations

import errno
import os
import resource
import socket
import time

import pytest
from master_helpers import MasterProcess, publish_files

from beoboot.master import fdlimit
from beoboot.master.listener import REST, listen

MAX_NODES, MAX_TRANSFERS = 4, 2
LIMIT = fdlimit.needed(MAX_NODES, MAX_TRANSFERS)  # the smallest limit beoserv starts with for these


def exchange(conn: socket.socket, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` on a connected socket; (status, headers, body)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: beoserv\r\n\r\n".encode())
    stream = conn.makefile("rb")
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return status, headers, body


def open_files(master: MasterProcess) -> int:
    assert master.proc
    return len(os.listdir(f"/proc/{master.proc.pid}/fd"))


@pytest.fixture
def master(tmp_path):
    root = tmp_path / "boot"
    publish_files(root, {"stage3.cpio": os.urandom(1 << 20)})
    config = tmp_path / "beoserv.toml"
    # request_timeout: the idle connections must hold their descriptors for the whole test
    config.write_text(f"max_nodes = {MAX_NODES}\nmax_transfers = {MAX_TRANSFERS}\nrequest_timeout = 120\n")
    server = MasterProcess(root, tmp_path / "nodes.db", tmp_path / "beoserv.log", config)
    server.start(hard_open_files=LIMIT)
    yield server
    server.stop()


def test_out_of_descriptors_is_503_then_service_resumes(master):
    host, port = master.url.removeprefix("http://").split(":")
    address = (host, int(port))
    early = [socket.create_connection(address, timeout=10) for _ in range(3)]  # accepted while there is room
    idle = []
    try:
        # every descriptor left taken by connections that send nothing (up to the listen backlog beyond)
        deadline = time.monotonic() + 20
        while open_files(master) < LIMIT:
            idle.append(socket.create_connection(address, timeout=10))
            assert time.monotonic() < deadline, f"beoserv holds {open_files(master)} of {LIMIT} descriptors"
        idle += [socket.create_connection(address, timeout=10) for _ in range(10)]  # in the backlog
        time.sleep(2.5)  # asyncio retries accept() each second: two more failures at least
        assert open_files(master) == LIMIT

        status, headers, body = exchange(early[0], "/stage3.cpio")
        assert status == 503 and 1 <= int(headers["retry-after"]) <= 5, body
        assert b"Too many open files" in body and b"retry shortly" in body

        # a build published meanwhile: its manifest cannot be read now, which is no reason to serve nothing
        publish_files(master.root, {"stage3.cpio": b"the new build"})
        time.sleep(1.5)  # the descriptor the 503 freed (its connection closed) is taken by the backlog again
        assert open_files(master) == LIMIT
        status, headers, body = exchange(early[1], "/stage3.cpio")
        assert status == 503 and "retry-after" in headers, body

        late = socket.create_connection(address, timeout=10)  # waits in the backlog, answered once accepted
        late.settimeout(1.5)
        late.sendall(b"GET /stage3.cpio HTTP/1.1\r\nHost: beoserv\r\n\r\n")
        with pytest.raises(TimeoutError):
            late.recv(1)

        for conn in idle:
            conn.close()
        idle.clear()
        late.settimeout(10)
        stream = late.makefile("rb")
        assert stream.readline().split()[1] == b"200"
        late.close()
        status, _, body = exchange(early[2], "/stage3.cpio")
        assert (status, body) == (200, b"the new build")
    finally:
        for conn in early + idle:
            conn.close()

    log = master.log_text()
    assert "Traceback" not in log, log
    told = [line for line in log.splitlines() if "Too many open files" in line]
    assert 1 <= len(told) <= 4, "\n".join(told)  # one line per kind per 10 s, each with its count
    assert any("no connection accepted: Too many open files" in line for line in told), log
    assert any("request(s) told to retry" in line for line in told), log


def test_accept_fails_once_per_rest_not_once_per_waiting_connection():
    """asyncio calls accept() up to 128 times per wake-up; after EMFILE the rest of them find "nothing
    waiting" until REST has passed (CPython gh-151615), then accept() is tried for real again."""
    listener = listen("127.0.0.1", 0)
    waiting = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here on
        with pytest.raises(OSError) as failed:
            listener.accept()
        assert failed.value.errno == errno.EMFILE
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with pytest.raises(BlockingIOError):
        listener.accept()  # resting still, though a descriptor is free
    time.sleep(REST)
    conn, _ = listener.accept()
    for sock in [conn, listener, *waiting]:
        sock.close()
