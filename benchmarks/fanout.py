#!/usr/bin/env python3
"""Job fan-out: `bpsh -a` on N simulated nodes, cold and warm, beside clush over ssh to loopback targets.

    .venv/bin/python benchmarks/fanout.py [--nodes 1000] [--ssh-targets 100]

Starts beoserv (loopback, free port) and `python -m stage3.simnode --count N`, then times, on every node:
`bpsh -a /bin/true` with cold caches and again warm, then `bpsh -a python3 -c pass` cold (its own files:
the libc is cached by then) and warm; with beoserv's and the simulator's CPU seconds for each. Beside it,
ClusterShell's `clush -f 64` runs the same commands over ssh on --ssh-targets names that all lead to one
OpenSSH sshd on 127.0.0.1 (as many loopback targets as ssh reaches here), and the ratio per target is
printed. "host busy" is how busy all the host's cores were over each run (the nodes' launchers and jobs
count there, in no process named here). Then Debian's nginx serves each cold job's libcache objects (the
master's manifest of the command) and the same simulator downloads them on N fresh nodes with the same
code and concurrency (`--fetch-only`): the wire's ceiling for a cold fan-out. Targets: warm
`bpsh -a /bin/true` on 1000 nodes < 1 s; a cold fan-out within 2x of nginx serving the same bytes
(ratio >= 0.5); 0 failures. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from boot_storm import start_nginx
from bpsh_vs_ssh import BPSH, PYTHON, cpu_seconds, start_master, start_sshd, stop, wait_for

from agent import protocol as p
from beoboot.master.manifest.describe import ManifestBuilder
from beoboot.master.objects import ObjectStore

NODE_BYTES = 32 << 20  # what a node's cache holds after both cold jobs
COMMANDS = {"/bin/true": ["/bin/true"], "python3 -c pass": [PYTHON, "-c", "pass"]}


def nodes_fit_in_ram(nodes: int) -> bool:
    """Whether every node's cache fits in RAM (simnode --in-ram, as a booted node holds it): python3's
    objects are some 30 MiB a node, so a thousand nodes' are kept on the disk instead."""
    available = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) << 10
    return nodes * NODE_BYTES <= available // 2


def simulator_cpu(sim: subprocess.Popen) -> float:
    """CPU seconds of the simulator's worker processes so far (its children)."""
    children = Path(f"/proc/{sim.pid}/task/{sim.pid}/children").read_text().split()
    return sum(cpu_seconds(int(pid)) for pid in children)


def host_busy_seconds() -> float:
    """CPU seconds all of this host's cores have spent busy (not idle, not waiting for I/O) since boot: the
    simulated nodes' jobs and launchers are no process this benchmark can name, so their share is what the
    host spent beyond beoserv and the simulator."""
    with open("/proc/stat") as f:
        ticks = [int(t) for t in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str]) -> tuple[float, int, str]:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    return time.monotonic() - start, done.returncode, done.stderr


def cold_objects(builder: ManifestBuilder) -> dict[str, list[p.JobFile]]:
    """Each command's objects a cold node fetches, from the master's manifest of it (root's, as bpsh runs
    here): python3's without those /bin/true's job cached already. The builder's store has the files behind
    them while it lives (the stdlib zip it derives is in its own directory)."""
    env = dict(os.environ)  # bpsh sends its environment: the locale it names brings the locale's files
    cached: set[str] = set()
    objects = {}
    for name, command in COMMANDS.items():
        files = builder.build(p.JobRequest("all", tuple(command), env, "/", 0, 0)).files
        objects[name] = [f for f in files if f.sha256 and f.sha256 not in cached]
        cached |= {f.sha256 for f in files if f.sha256}
    return objects


def nginx_fetches(work: Path, nodes: int, in_ram: list[str]) -> dict[str, tuple[float, int, int]]:
    """nginx serves each command's cold objects as beoserv lays them out, and N fresh simulated nodes fetch
    them: (seconds from the first node's start to the last one's end, bytes per node, nodes that failed)."""
    store = ObjectStore()
    builder = ManifestBuilder(store)
    objects = cold_objects(builder)
    root = work / "nginx-root"
    for files in objects.values():
        for entry in files:
            served = root / p.OBJECTS_PATH.format(digest=entry.sha256).lstrip("/")
            served.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(str(store.lookup(entry.sha256)), served)
            served.chmod(0o644)
    nginx, url = start_nginx(root, work)
    took = {}
    try:
        for name, files in objects.items():
            listing, report = work / f"{len(took)}.json", work / f"{len(took)}-report.json"
            listing.write_text(json.dumps([asdict(f) for f in files]))
            argv = [sys.executable, "-m", "stage3.simnode", "--master", url, "--dir", str(work / f"fetch{len(took)}")]
            argv += ["--count", str(nodes), *in_ram, "--fetch-only", str(listing), "--report", str(report)]
            subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=3600)  # its failures are in the report
            figures = json.loads(report.read_text())["nodes"]
            spans = [f["fetch"] for f in figures if f["fetch"]]
            failed = sum(1 for f in figures if f["error"] or not f["fetch"])
            span = max(end for _, end in spans) - min(start for start, _ in spans) if spans else float("nan")
            took[name] = (span, sum(f.size for f in files), failed)
    finally:
        stop(nginx)
    return took


def clush_config(work: Path, ssh: list[str]) -> list[str]:
    """clush's ssh options: every target name reaches the one sshd on 127.0.0.1."""
    options = ssh[1:-1]  # ssh [-q -i KEY -p PORT -o ...] root@127.0.0.1
    config = work / "ssh_config"
    config.write_text("Host *\n  HostName 127.0.0.1\n  User root\n")
    return ["-o", " ".join([*options, "-F", str(config)])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--ssh-targets", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (www-data) read the objects in it
        master, url = start_master(work)
        log_path = work / "simnode.log"
        argv = [sys.executable, "-m", "stage3.simnode", "--master", url, "--dir", str(work / "nodes")]
        in_ram = ["--in-ram"] if nodes_fit_in_ram(args.nodes) else []
        sim = subprocess.Popen([*argv, "--count", str(args.nodes), *in_ram], stdout=open(log_path, "wb"), stderr=2)
        try:
            start = time.monotonic()
            wait_for(log_path, f"simnode: {args.nodes} nodes up", sim, timeout=1800)
            where = "in RAM" if in_ram else "on the disk"
            print(f"{args.nodes} simulated nodes up in {time.monotonic() - start:.1f} s, their files {where}")
            for name, command in COMMANDS.items():
                for state in ("cold", "warm"):
                    master_cpu, sim_cpu, host_cpu = cpu_seconds(master.pid), simulator_cpu(sim), host_busy_seconds()
                    took, status, stderr = timed(
                        [PYTHON, "-IS", str(BPSH), "--socket", str(work / "bpsh.sock"), "-a", *command]
                    )
                    failed = stderr.count("\n") if status else 0
                    rows.append(
                        (
                            f"bpsh -a {name} ({state})",
                            took,
                            status,
                            failed,
                            cpu_seconds(master.pid) - master_cpu,
                            simulator_cpu(sim) - sim_cpu,
                            host_busy_seconds() - host_cpu,
                        )
                    )
        finally:
            stop(sim)
            stop(master)
        clush = shutil.which("clush")
        theirs = {}
        if clush is None:
            print("clush not installed (apt-get install clustershell): no comparison", file=sys.stderr)
        else:
            sshd, ssh = start_sshd(work)
            try:
                targets = f"n[1-{args.ssh_targets}]"
                for name, command in COMMANDS.items():
                    # the better of two runs, as bpsh's warm figure is its second: sshd's first burst of
                    # connections is the slower
                    runs = [
                        timed([clush, "-f", "64", "-S", "-w", targets, *clush_config(work, ssh), *command])
                        for _ in range(2)
                    ]
                    took, status, _ = min(runs)
                    theirs[name] = (took, max(run[1] for run in runs))
            finally:
                stop(sshd)
        (work / "nginx").mkdir()
        fetches = nginx_fetches(work / "nginx", args.nodes, in_ram)
    cores = os.cpu_count() or 1
    print(f"{'':34s}{'seconds':>9s}{'exit':>6s}{'failed':>8s}{'beoserv cpu':>13s}{'sim cpu':>9s}{'host busy':>11s}")
    for label, took, status, failed, mcpu, scpu, hcpu in rows:
        busy = f"{hcpu / (took * cores):.0%}"  # of the host's cores over the run: near 100%, the host is the bound
        print(f"{label:34s}{took:9.2f}{status:6d}{failed:8d}{mcpu:13.2f}{scpu:9.1f}{busy:>11s}")
    for name, (took, status) in theirs.items():
        ours = next(row[1] for row in rows if row[0] == f"bpsh -a {name} (warm)")
        per_ours, per_theirs = ours / args.nodes, took / args.ssh_targets
        print(
            f"{'clush -f 64 ' + name:34s}{took:9.2f}{status:6d}   on {args.ssh_targets} targets; per target "
            f"{per_theirs * 1000:.1f} ms vs bpsh warm {per_ours * 1000:.2f} ms: {per_theirs / per_ours:.0f}x"
        )
    for name, (took, size, failed) in fetches.items():
        ours = next(row[1] for row in rows if row[0] == f"bpsh -a {name} (cold)")
        print(
            f"{'nginx, ' + name + ' cold objects':34s}{took:9.2f}{'':6s}{failed:8d}   {size / 2**20:.2f} MiB per node; "
            f"ratio to bpsh cold {took / ours:.3f}   target >= 0.5"
        )
    _, warm_true, _, _, warm_master, _, warm_host = next(row for row in rows if row[0] == "bpsh -a /bin/true (warm)")
    print(
        f"warm bpsh -a /bin/true on {args.nodes} nodes: {warm_true:.2f} s   target < 1 s   (beoserv "
        f"{warm_master:.2f} CPU s of the host's {warm_host:.2f} busy: the rest is the simulated nodes and their jobs)"
    )
    return 0 if all(row[2] == 0 for row in rows) and not any(f[2] for f in fetches.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
