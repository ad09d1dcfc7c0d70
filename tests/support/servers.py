"""Real servers for tests, on loopback only: nginx serving a directory."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
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
