"""Run the real beoserv in a child process on a free loopback port, as the tests' "master"."""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)/")
BPSH_SCRIPT = str(Path(__file__).resolve().parents[2] / "beoboot" / "master" / "bpsh" / "executable.py")


# The two bpsh clients, which tests of the common path run alike: the Python one (client.py) and the
# compiled one (fast/bpsh.c), which build.py and pip install as `bpsh`
CLIENTS = ("python", "compiled")


def bpsh_argv(socket: Path | str, *args: str, client: str = "python") -> list[str]:
    """The bpsh command as users run it, at this master's socket: the client file under `python -IS`, or
    the compiled client (compiled once per test run from the checkout's source)."""
    if client == "compiled":
        return [compiled_bpsh(), "--socket", str(socket), *args]
    assert client == "python", client
    return [sys.executable, "-IS", BPSH_SCRIPT, "--socket", str(socket), *args]


def run_bpsh(master, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """bpsh at `master`'s socket, its output captured as text."""
    return subprocess.run(
        bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=timeout, **kwargs
    )


def bpsh_argv_for_anyone(socket: Path | str, *args: str, client: str = "python") -> list[str]:
    """bpsh_argv for a test that runs bpsh as another user: the system's python3 (the venv's may be under
    /root); the compiled client is in a directory anyone may search."""
    argv = bpsh_argv(socket, *args, client=client)
    return ["/usr/bin/python3", *argv[1:]] if client == "python" else argv


@functools.cache
def compiled_bpsh() -> str:
    """bpsh.c compiled into a scratch directory anyone may search, falling back to the system's python3
    with the checkout's client (as .venv/bin/bpsh does), so that it runs as other users too."""
    from beoboot.master.bpsh.fast.compile import compile_client, venv_fallback

    scratch = tempfile.mkdtemp(prefix="beoboot-bpsh-", dir="/tmp")
    os.chmod(scratch, 0o755)
    atexit.register(shutil.rmtree, scratch, True)
    return str(compile_client(Path(scratch) / "bpsh", venv_fallback("/usr/bin/python3")))


def stdlib_zip_member(relative: str) -> str:
    """The name `relative` (e.g. json/__init__.py) has in the master's stdlib zip for jobs, found from the
    master's files, not from beoboot: the compiled .pyc when it is current (as on a fresh Debian install),
    else the source (after an upgrade or a touch left the .pyc behind)."""
    source = f"/usr/lib/python3.{sys.version_info.minor}/{relative}"
    st = os.stat(source)
    try:
        with open(importlib.util.cache_from_source(source), "rb") as f:
            header = f.read(16)
    except OSError:
        return relative
    current = len(header) == 16 and struct.unpack("<4xIII", header) == (0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size)
    return relative + "c" if current else relative


# QEMU's user networking hands its nodes a name server (10.0.2.3) that forwards to this host's resolver,
# and so to the outside world: a test master without a config of its own names the node's loopback, where
# nothing answers, for its nodes' resolv.conf (stage3.names). A test with a config names its own servers.
SAFE_DNS = 'dns_servers = ["127.0.0.1"]\n'


class MasterProcess:
    def __init__(self, root: Path, db: Path, log: Path, config: Path | None = None, port: int = 0) -> None:
        self.root, self.db, self.log_path, self.config, self.port = root, db, log, config, port
        self.bpsh_socket = log.parent / "bpsh.sock"  # each test master its own, never /run/beoserv
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(
        self, timeout: float = 10.0, open_files: int | None = None, hard_open_files: int | None = None
    ) -> MasterProcess:
        """Start beoserv; with `open_files`, under that soft open-files limit (a service's usual 1024), and
        with `hard_open_files` that hard one (which beoserv raises its soft limit to)."""
        args = [
            sys.executable,
            "-m",
            "beoboot.master.cli",
            "beoserv",
            "--root",
            str(self.root),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--db",
            str(self.db),
            "--bpsh-socket",
            str(self.bpsh_socket),
        ]
        config = self.config
        if config is None:  # QEMU nodes must not take their user network's name server (SAFE_DNS)
            config = self.log_path.parent / "beoserv-default.toml"
            config.write_text(SAFE_DNS)
        args += ["--config", str(config)]
        # stderr to a file, not a pipe: an undrained pipe would block the server once 64 KiB of log piled up
        self._log_file = open(self.log_path, "ab")
        self._offset = self.log_path.stat().st_size

        def limit() -> None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            hard = hard if hard_open_files is None else hard_open_files
            soft = hard if hard_open_files is not None and open_files is None else (open_files or soft)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))

        self.proc = subprocess.Popen(
            args, stdout=self._log_file, stderr=self._log_file, env={**os.environ}, preexec_fn=limit
        )
        found = self.wait_for_log(LISTENING, timeout)
        self.url = found.group(1)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[self._offset :]

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout: float = 5.0, after: int = 0) -> re.Match[str]:
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.log_text(), after)
            if found:
                return found
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"beoserv exited ({self.proc.returncode}):\n{self.log_text()}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern.pattern!r} in the beoserv log within {timeout}s:\n{self.log_text()}")

    def signal(self, signum: int) -> None:
        assert self.proc
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def fds_and_rss(self) -> tuple[int, int]:
        assert self.proc
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return fds, rss


# Builds made for QEMU tests, by (port, settings): a build takes most of a minute, and test modules that ask
# for the same one (at shared_port(), each starting its own master there in turn) share it
_BUILDS: dict[tuple[int, str], Path] = {}
_SHARED_PORT: list[int] = []
SHARED_PORTS = range(20000, 32768)  # below the kernel's ephemeral ports: no socket bound to port 0 takes it


def shared_port() -> int:
    """The port the session's shared build names for its master (127.0.0.1, 10.0.2.2 from QEMU)."""
    if not _SHARED_PORT:
        for port in random.Random().sample(SHARED_PORTS, 50):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _SHARED_PORT.append(port)
            break
        else:
            raise RuntimeError(f"no free port in {SHARED_PORTS}")
    return _SHARED_PORT[0]


def build_for_master(tmp_path_factory, port: int, build_settings: str = "") -> Path:
    """A build whose nodes look for their master at the host's 127.0.0.1:PORT (10.0.2.2 from QEMU); built
    once per session for each port and settings (its output is read, never changed, by the tests)."""
    import pytest

    from beoboot import config
    from beoboot.image import builder

    if not list(Path("/boot").glob("vmlinuz-*")):
        pytest.skip("needs a kernel: python3 build.py setup")
    if (port, build_settings) in _BUILDS:
        return _BUILDS[(port, build_settings)]
    site = tmp_path_factory.mktemp("site") / "site.toml"
    site.write_text(f'[build]\nmaster_url = "http://10.0.2.2:{port}/"\n{build_settings}')
    outdir = tmp_path_factory.mktemp("out")
    builder.build(config.load(site), outdir)
    _BUILDS[(port, build_settings)] = outdir
    return outdir


def start_simnodes(
    master_url: str, work: Path, count: int = 1, *, timeout: float = 20, extra: tuple[str, ...] = (), **popen
) -> subprocess.Popen[bytes]:
    """`python -m stage3.simnode` with `count` nodes, their roots under work/nodes and its output in
    work/simnode.log; returns once all are up (registered, linked)."""
    log_path = work / "simnode.log"
    with open(log_path, "ab") as log:
        argv = [
            sys.executable,
            "-m",
            "stage3.simnode",
            "--master",
            master_url,
            "--dir",
            str(work / "nodes"),
            "--count",
            str(count),
            *extra,
        ]
        sim = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + timeout
    while f"simnode: {count} nodes up".encode() not in log_path.read_bytes():
        assert sim.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    return sim


def running_job(master: MasterProcess, *args: str) -> subprocess.Popen[bytes]:
    """`bpsh ARGS` in the background, returned once `bps` lists its job as running on the node."""
    job = subprocess.Popen(bpsh_argv(master.bpsh_socket, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bps = [sys.executable, "-m", "beoboot.master.cli", "bps", "--master", master.url, "--json"]
    deadline = time.monotonic() + 120
    while not any(row["state"] == "running" for row in json.loads(subprocess.run(bps, capture_output=True).stdout)):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.1)
    return job


def let_others_reach(socket: Path) -> None:
    """Let other users (nobody) reach a test master's socket: search permission on its directories."""
    for parent in [socket.parent, *socket.parent.parents]:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)


@contextlib.contextmanager
def simulated_cluster(work: Path, nodes: int = 1) -> Iterator[MasterProcess]:
    """A beoserv with its boot tree, registry and log in `work`, and `nodes` simulated nodes, all up; both
    stopped at the end."""
    (work / "boot").mkdir()
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log").start()
    sim = start_simnodes(master.url, work, nodes)
    try:
        yield master
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        master.stop()


def publish_files(root: Path, files: dict[str, bytes | str], kernel_version: str | None = None) -> Path:
    """A build of `files` (path: bytes, or str for a symlink to that target) published into `root` by the
    builder's own publishing code, its manifest listing every one (and the kernel release, if given);
    returns the build's directory."""
    import hashlib

    from beoboot.image.outputs import Staging

    with Staging(Path(root)) as staging:
        artifacts = []
        for path, data in files.items():
            target = staging.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, str):
                target.symlink_to(data)
                data = b""
            else:
                target.write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            artifacts.append({"kind": "image", "name": path, "path": path, "size": len(data), "sha256": digest})
        manifest: dict[str, object] = {"artifacts": artifacts}
        if kernel_version is not None:
            manifest["kernel_version"] = kernel_version
        (staging.path / "manifest.json").write_text(json.dumps(manifest))
        return staging.publish("manifest.json")
