"""The simulator's reference mode for a cold fan-out: `simnode --fetch-only` downloads a job's objects on
every node from any web server laid out as beoserv is, and `--in-ram` keeps the nodes' files off the disk."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent import protocol as p

NODES = 20


class CountingHandler(SimpleHTTPRequestHandler):
    served: Counter[str] = Counter()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        CountingHandler.served[self.path] += 1
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def object_server(tmp_path):
    """A plain web server with two objects at beoserv's paths; the JobFile fields of each."""
    root = tmp_path / "www"
    files = []
    for name, data in (("big", os.urandom(300_000)), ("small", b"#!/bin/sh\n")):
        digest = hashlib.sha256(data).hexdigest()
        served = root / p.OBJECTS_PATH.format(digest=digest).lstrip("/")
        served.parent.mkdir(parents=True, exist_ok=True)
        served.write_bytes(data)
        files.append({"path": f"/usr/lib/{name}", "mode": 0o755, "sha256": digest, "size": len(data)})
    CountingHandler.served = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(CountingHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()
    server.server_close()


def simnode(url: str, work: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "stage3.simnode", "--master", url, "--dir", str(work / "nodes"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_every_node_fetches_each_object_once_in_ram(tmp_path, object_server):
    assert os.getuid() == 0, "the simulator's mount namespace needs root, as the suite runs"
    url, files = object_server
    listing = tmp_path / "files.json"
    listing.write_text(json.dumps(files))
    report = tmp_path / "report.json"
    done = simnode(
        url, tmp_path, "--count", str(NODES), "--in-ram", "--fetch-only", str(listing), "--report", str(report)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(report.read_text())["nodes"]
    assert len(figures) == NODES
    assert all(not f["error"] and 0 <= f["fetch"][0] <= f["fetch"][1] for f in figures), figures
    assert CountingHandler.served == {p.OBJECTS_PATH.format(digest=f["sha256"]): NODES for f in files}
    # the nodes' files were in the simulator's tmpfs, gone with it: nothing reached the host's disk
    assert os.listdir(tmp_path / "nodes") == []


def test_a_listing_that_is_not_job_files_is_refused_by_name(tmp_path, object_server):
    url, _ = object_server
    listing = tmp_path / "files.json"
    listing.write_text(json.dumps([{"path": "/x", "colour": "blue"}]))
    done = simnode(url, tmp_path, "--fetch-only", str(listing))
    assert done.returncode == 2
    assert f"{listing}: not a JSON list of JobFile fields" in done.stderr
    assert not CountingHandler.served
