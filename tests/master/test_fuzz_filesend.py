"""FileSend (beoboot.master.filesend), beoserv's response for boot files and libcache objects: whatever Range
and If-Range a client sends, the answer is the bytes RFC 9110 says, from a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beoboot.master.filesend import FileSend, last_modified, open_to_send, plan, strong_etag

SIZES = (0, 1, 7, 4096, 100_003)


class Server:
    """An aiohttp app on a loop of its own thread, serving /SIZE as FileSend from a file of that size."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sent: list[tuple[str, int]] = []  # (path and query, what its FileSend reported sending)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/{size}", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        file, st = open_to_send(self.root / request.match_info["size"])
        return FileSend(file, st, lambda sent: self.sent.append((request.path_qs, sent)))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("files")
    for size in SIZES:
        (root / str(size)).write_bytes(os.urandom(size))
    served = Server(root)
    yield served
    served.stop()


def get(server: Server, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def expected(size: int, first: int | None, last: int | None) -> tuple[int, int, int]:
    """RFC 9110 14.1.2, written out: (status, first byte, count) for bytes=FIRST-LAST, FIRST-, or -LAST."""
    if first is None:  # a suffix: the last `last` bytes
        assert last is not None
        if last == 0 or size == 0:
            return 416, 0, 0
        return 206, max(0, size - last), min(last, size)
    if first >= size:
        return 416, 0, 0
    end = size - 1 if last is None else min(last, size - 1)
    return 206, first, end - first + 1


positions = st.integers(0, 200_000)


@st.composite
def ranges(draw) -> tuple[int | None, int | None]:
    kind = draw(st.sampled_from(["closed", "open", "suffix"]))
    if kind == "suffix":
        return None, draw(st.integers(1, 200_000))
    first = draw(positions)
    return first, (draw(st.integers(first, 200_000)) if kind == "closed" else None)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(size=st.sampled_from(SIZES), wanted=ranges())
def test_a_range_gets_the_bytes_the_rfc_says(server, size, wanted):
    first, last = wanted
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    status, headers, body = get(server, f"/{size}", {"Range": header})
    data = (server.root / str(size)).read_bytes()
    want_status, start, count = expected(size, first, last)
    assert status == want_status, header
    if status == 206:
        assert body == data[start : start + count]
        assert headers["Content-Range"] == f"bytes {start}-{start + count - 1}/{size}"
    else:
        assert headers["Content-Range"] == f"bytes */{size}" and body == b""


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(size=st.sampled_from(SIZES), header=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
def test_any_range_header_gets_whole_bytes_or_a_part_or_416(server, size, header):
    status, headers, body = get(server, f"/{size}", {"Range": header})
    data = (server.root / str(size)).read_bytes()
    assert status in (200, 206, 416), header
    if status == 200:
        assert body == data
    elif status == 206:
        first, _, last = headers["Content-Range"].removeprefix("bytes ").partition("/")[0].partition("-")
        assert body == data[int(first) : int(last) + 1] and body
    else:
        assert body == b""


@settings(deadline=None)
@given(size=st.integers(0, 1 << 40), start=st.integers(-(1 << 41), 1 << 41), stop=st.integers(0, 1 << 41) | st.none())
def test_a_plan_stays_within_the_file(size, start, stop):
    if stop is not None and start >= 0 and stop <= start:
        return  # aiohttp refuses such a range before it is planned
    status, first, count = plan(size, slice(start, stop))
    assert status in (206, 416)
    if status == 206:
        assert 0 <= first < size and 0 < count and first + count <= size
    assert plan(size, None) == (200, 0, size)


def test_if_range_serves_the_part_only_to_the_same_version(server):
    path = server.root / "4096"
    st_now = os.stat(path)
    data = path.read_bytes()
    date = email.utils.formatdate(last_modified(st_now), usegmt=True)
    for validator, status in [
        (strong_etag(st_now), 206),
        ('"0-0"', 200),  # another version: the whole file
        ("W/" + strong_etag(st_now), 200),  # a weak tag never matches
        (date, 206),
        (email.utils.formatdate(last_modified(st_now) - 1, usegmt=True), 200),
        ("yesterday", 200),
    ]:
        got, _, body = get(server, "/4096", {"Range": "bytes=10-", "If-Range": validator})
        assert (got, body) == (status, data[10:] if status == 206 else data), validator


def test_each_send_reports_its_bytes_and_closes_its_file(server):
    served = server.root / "100003"
    for n, headers in enumerate(({}, {"Range": "bytes=5-9"}, {"Range": "bytes=999999-"})):
        get(server, f"/100003?reported={n}", headers)
    deadline = time.monotonic() + 5  # the client may have its answer before the server's coroutine goes on
    while len(reported := [sent for path, sent in server.sent if "reported" in path]) < 3:
        assert time.monotonic() < deadline, server.sent
        time.sleep(0.01)
    assert sorted(reported) == [0, 5, 100_003]
    # The file, not the fd count: the process's count moves with sockets other threads close late.
    assert not files_open(served)


def files_open(path: Path) -> list[str]:
    """This process's descriptors open on path."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in os.listdir(fds):
        try:
            if os.readlink(fds / fd) == str(path):
                found.append(fd)
        except FileNotFoundError:  # closed while we looked
            continue
    return found
