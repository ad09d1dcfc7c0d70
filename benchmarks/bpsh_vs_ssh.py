"""bpsh on simulated nodes against `ssh localhost`, side by side in one run."""

#     .venv/bin/python benchmarks/bpsh_vs_ssh.py [--runs 200] [--ssh-runs 30] [--nodes 64]
#
# Starts its own beoserv (loopback, free port), `python -m stage3.simnode` nodes, and an OpenSSH sshd on a
# loopback port with a generated host key and an authorized key (Debian's openssh-server), and stops them
# all at the end. Needs root (simulated nodes chroot their jobs). Figures:
#   * a cached /bin/true: the `bpsh` command as users run it (the compiled client, beoboot/master/bpsh/fast), against
#     `ssh 127.0.0.1 /bin/true`; and the job alone (the client called in-process: connect, manifest, node,
#     exit status, without the interpreter's start);
#   * the first run of a job on a node with a cold cache (/bin/true, then python3);
#   * `bpsh -a uptime` on --nodes simulated nodes (cold, then cached), with the CPU time beoserv and the
#     simulating process spent on the cold run: real nodes fetch in parallel, each on its own CPUs, while
#     here one Python process does every node's downloads.

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from beoboot.master.bpsh.client import Client, parse_args
from beoboot.master.bpsh.fast.compile import compile_client, venv_fallback

BPSH = Path(__file__).resolve().parent.parent / "beoboot" / "master" / "bpsh" / "executable.py"  # the Python client
PYTHON = "/usr/bin/python3"  # bpsh's interpreter (its #! line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.args[:3]} did not say {text!r}:\n{path.read_text(errors='replace')}")
        time.sleep(0.05)


def start_master(work: Path, root: Path | None = None, config: Path | None = None) -> tuple[subprocess.Popen, str]:
    """beoserv on a free loopback port, serving `root` (an empty tree by default), with its --config file
    `config` if given; its log in work."""
    port = free_port()
    if root is None:
        root = work / "boot"
        root.mkdir()
    log = work / "beoserv.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beoboot.master.cli",
            "beoserv",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(work / "nodes.db"),
            "--bpsh-socket",
            str(work / "bpsh.sock"),
            *(["--config", str(config)] if config else []),
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(log, "listening on", proc)
    return proc, f"http://127.0.0.1:{port}"


def start_simnodes(work: Path, url: str, count: int, first: int) -> subprocess.Popen:
    log = work / f"simnode-{first}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stage3.simnode",
            "--master",
            url,
            "--dir",
            str(work / "nodes"),
            "--count",
            str(count),
            "--first",
            str(first),
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(log, f"simnode: {count} nodes up", proc, timeout=120)
    return proc


def compiled_bpsh(work: Path) -> Path:
    """The compiled client, as build.py makes .venv/bin/bpsh and pip installs bpsh, in `work`."""
    return compile_client(work / "bin" / "bpsh", venv_fallback(PYTHON))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process used so far (/proc/PID/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def time_library(socket: Path, args: list[str], runs: int) -> list[float]:
    null = os.open(os.devnull, os.O_RDWR)
    options = parse_args(["--socket", str(socket), "-n", *args])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        status = Client(options, fds=(null, null, 2)).run()
        times.append(time.perf_counter() - start)
        if status != 0:
            raise SystemExit(f"bpsh {' '.join(args)} exited {status}")
    os.close(null)
    return times


def time_commands(argvs: list[list[str]], runs: int) -> list[list[float]]:
    """Wall time of each command from spawning it to reaping it, stdin and stdout on /dev/null, the
    commands taking turns so that a slow spell of this shared machine falls on all of them alike.
    posix_spawn (a vfork, as a shell's) rather than subprocess.run, whose own bookkeeping would add half a
    millisecond to every command measured here."""
    null = os.open(os.devnull, os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
    times: list[list[float]] = [[] for _ in argvs]
    for _ in range(runs):
        for argv, spent in zip(argvs, times):
            start = time.perf_counter()
            pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
            _, wait_status = os.waitpid(pid, 0)
            spent.append(time.perf_counter() - start)
            if wait_status != 0:
                raise SystemExit(f"{' '.join(argv)} ended with wait status {wait_status}")
    os.close(null)
    return times


def start_sshd(work: Path) -> tuple[subprocess.Popen, list[str]]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise SystemExit("needs OpenSSH: apt-get install openssh-server openssh-client")
    keys = work / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "user.pub", keys / "authorized_keys")
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\nPrintMotd no\nLogLevel ERROR\n"
        # a fan-out opens many connections at once: sshd's default (10:30:100) drops them past 10
        "MaxStartups 1024\nMaxSessions 1024\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=open(keys / "sshd.log", "wb"))
    client = [
        "ssh",
        "-q",
        "-i",
        str(keys / "user"),
        "-p",
        str(port),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "root@127.0.0.1",
    ]
    deadline = time.monotonic() + 10
    while subprocess.run([*client, "/bin/true"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"sshd did not accept the key: {(keys / 'sshd.log').read_text()}")
        time.sleep(0.1)
    return proc, client


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.2f} ms median  (min {min(values) * 1000:.2f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--ssh-runs", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=64)
    args = parser.parse_args()
    if os.getuid() != 0:
        raise SystemExit("run as root: simulated nodes chroot their jobs")
    with tempfile.TemporaryDirectory(prefix="bpsh-bench-") as tmp:
        work = Path(tmp)
        master, url = start_master(work)
        sock = work / "bpsh.sock"
        procs = [master]
        try:
            one = start_simnodes(work, url, 1, 0)
            procs.append(one)
            cold_true = time_library(sock, ["0", "/bin/true"], 1)
            cold_python = time_library(sock, ["0", "/usr/bin/python3", "-c", "pass"], 1)
            cached = time_library(sock, ["0", "/bin/true"], args.runs)
            cached_cli, interpreter = time_commands(
                [
                    [str(compiled_bpsh(work)), "--socket", str(sock), "0", "/bin/true"],
                    [PYTHON, "-IS", "-c", "import posix; posix._exit(0)"],
                ],
                args.runs,
            )
            sshd, client = start_sshd(work)
            procs.append(sshd)
            (ssh,) = time_commands([[*client, "/bin/true"]], args.ssh_runs)
            stop(one)
            many = start_simnodes(work, url, args.nodes, 1000)
            procs.append(many)
            cpu_before = (cpu_seconds(master.pid), cpu_seconds(many.pid))
            fan_cold = time_library(sock, ["-a", "uptime"], 1)
            fan_cpu = (cpu_seconds(master.pid) - cpu_before[0], cpu_seconds(many.pid) - cpu_before[1])
            fan = time_library(sock, ["-a", "uptime"], 20)
        finally:
            for proc in reversed(procs):
                stop(proc)
    ratio = statistics.median(ssh) / statistics.median(cached)
    ratio_cli = statistics.median(ssh) / statistics.median(cached_cli)
    print(f"cached /bin/true, `bpsh` command           {ms(cached_cli)}")
    print(f"  of which the job (client in-process)     {ms(cached)}")
    print(f"  python3 -IS start and exit, nothing run  {ms(interpreter)}")
    print(f"ssh 127.0.0.1 /bin/true (OpenSSH)          {ms(ssh)}")
    print(f"ssh / `bpsh` command: {ratio_cli:.1f}x   (ssh / job alone: {ratio:.1f}x)   targets: < 10 ms, >= 20x")
    print(f"cold cache, first /bin/true                {cold_true[0] * 1000:8.2f} ms")
    print(f"cold cache, first python3 -c pass          {cold_python[0] * 1000:8.2f} ms")
    print(
        f"bpsh -a uptime on {args.nodes} nodes, cold      {fan_cold[0] * 1000:8.2f} ms"
        f"  (CPU: beoserv {fan_cpu[0]:.2f} s, the one process simulating every node {fan_cpu[1]:.2f} s)"
    )
    print(f"bpsh -a uptime on {args.nodes} nodes, cached    {ms(fan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
