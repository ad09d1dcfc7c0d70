"""Real servers for tests, on loopback only: nginx serving a directory, and a raw HTTP server that answers
whatever bytes a test scripts (cut off, malformed, stalled: what no real server sends on purpose)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NGINX_CONF = """
daemon off;
user root;  # pytest's tmp directories are private to root
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        limit_rate {rate};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nginx(root: Path, workdir: Path, rate: str = "0", port: int = 0) -> Iterator[str]:
    """Serve `root` at the returned base URL with the real nginx; `rate` throttles (e.g. "200k"); `port` 0:
    a free one (give one when a build already names it in its master_url)."""
    if shutil.which("nginx") is None:
        pytest.skip("needs nginx: run `python3 build.py setup`")
    port = port or free_port()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=workdir, port=port, root=root, rate=rate))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def access_log_statuses(workdir: Path) -> list[int]:
    return [int(line.split('"')[2].split()[0]) for line in (workdir / "access.log").read_text().splitlines()]


@dataclass
class Request:
    """A request as the scripted server read it."""

    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    peer: tuple[str, int]
    connection: int  # the how-manieth connection it came on (0, 1, ...)


@dataclass
class ScriptedServer:
    """Answers each request with `answer(sock, request)`: it writes what it likes on the socket and returns
    whether the connection stays open for another request (False: closed at once). Records every request."""

    answer: Callable[[socket.socket, Request], bool]
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    release: threading.Event = field(default_factory=threading.Event)  # ends the waits of stalling answers

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return  # closed: the test is over
            number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._connection, args=(conn, peer, number), daemon=True).start()

    def _connection(self, conn: socket.socket, peer: tuple[str, int], number: int) -> None:
        with conn:
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffered) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffered += data
                body, buffered = buffered[:length], buffered[length:]
                request = Request(method, target, headers, body, peer, number)
                self.requests.append(request)
                try:
                    if not self.answer(conn, request):
                        return
                except OSError:
                    return


@contextlib.contextmanager
def scripted_http(answer: Callable[[socket.socket, Request], bool]) -> Iterator[ScriptedServer]:
    """A ScriptedServer on a free loopback port, its URL (no trailing slash) in .url."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = ScriptedServer(answer, url=f"http://127.0.0.1:{listener.getsockname()[1]}")
    thread = threading.Thread(target=server.serve, args=(listener,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(), which a close() from here would not
        listener.close()
        thread.join(timeout=5)


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    """A whole HTTP/1.1 200 answer with Content-Length, kept alive, with `extra` header lines."""
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
