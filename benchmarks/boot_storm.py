#!/usr/bin/env python3
"""A boot storm: N simulated nodes boot at once against beoserv, beside nginx serving the same files.

    .venv/bin/python benchmarks/boot_storm.py [--nodes 1000]

Builds the default images, starts beoserv on them (loopback, free port, its default limits) and
`python -m stage3.simnode --count N --boot`: every node downloads stage 3 and the environment root as
stage 2 does (pinned, Range resume, backoff, Retry-After), then registers and opens its job link. Printed:
the time until every node is up, failures, per-node p50/p99, beoserv's CPU seconds, peak RSS and open
files, and the simulator's own CPU seconds, kept apart. Then Debian's nginx serves the same build
directory and the same simulator downloads the same files with the same concurrency (--boot-only): the
wire's ceiling on this machine. Target: nginx's download time / beoserv's >= 0.5, and 0 failures.
Needs root (the simulated nodes' mount namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bpsh_vs_ssh import cpu_seconds, free_port, start_master, stop, wait_for

from beoboot import config, log
from beoboot.image import builder


class Sampler:
    """Peak RSS and open files of a process, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss_kib, self.fds = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = int(status.split("VmRSS:")[1].split()[0])
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, IndexError):
                return
            self.rss_kib, self.fds = max(self.rss_kib, rss), max(self.fds, fds)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def storm(url: str, work: Path, nodes: int, boot_only: bool) -> tuple[float, dict]:
    """Run the simulator to the end of its boot; (seconds until every node was up, its report)."""
    report = work / "report.json"
    log_path = work / "simnode.log"
    argv = [sys.executable, "-m", "stage3.simnode", "--master", url, "--dir", str(work / "nodes")]
    argv += ["--count", str(nodes), "--report", str(report), "--boot-only" if boot_only else "--boot", "--in-ram"]
    start = time.monotonic()
    sim = subprocess.Popen(argv, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    if boot_only:
        sim.wait()
    else:
        wait_for(log_path, f"simnode: {nodes} nodes up", sim, timeout=3600)
    took = time.monotonic() - start
    stop(sim)
    return took, json.loads(report.read_text())


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"worker_processes auto;\npid {work}/nginx.pid;\nerror_log {work}/nginx-error.log;\n"
        "worker_rlimit_nofile 65536;\nevents { worker_connections 16384; }\n"
        f"http {{ access_log off; sendfile on; tcp_nopush on; keepalive_timeout 30;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;", "-p", str(work)])
    time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


def per_node(report: dict, key: str) -> tuple[float, float]:
    values = sorted(n[key] for n in report["nodes"] if n[key] is not None)
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    log.setup(quiet=True)
    with tempfile.TemporaryDirectory(prefix="boot-storm-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (www-data) read the build in it
        out = work / "out"
        builder.build(config.load(), out)
        served = out.resolve() / "current"  # the published build: what beoserv and nginx both serve
        sizes = sum((served / name).stat().st_size for name in ("stage3.cpio.gz", "envroot.cpio.gz"))
        (work / "beoserv").mkdir()
        master, url = start_master(work / "beoserv", out)
        sampler = Sampler(master.pid)
        cpu_before = cpu_seconds(master.pid)
        try:
            up, ours = storm(url, work / "beoserv", args.nodes, boot_only=False)
        finally:
            sampler.stop()
            master_cpu = cpu_seconds(master.pid) - cpu_before
            stop(master)
        (work / "nginx").mkdir()
        nginx, nginx_url = start_nginx(served, work / "nginx")
        try:
            theirs_took, theirs = storm(nginx_url, work / "nginx", args.nodes, boot_only=True)
        finally:
            stop(nginx)
    ours_boot = max((n["booted"] or 0) for n in ours["nodes"])
    theirs_boot = max((n["booted"] or 0) for n in theirs["nodes"])
    failures = sum(1 for n in ours["nodes"] if n["error"])
    p50, p99 = per_node(ours, "up")
    b50, b99 = per_node(ours, "booted")
    n50, n99 = per_node(theirs, "booted")
    print(f"boot storm: {args.nodes} nodes, {sizes / 2**20:.1f} MiB each (stage 3 + envroot), loopback")
    print(f"{'':34s}{'beoserv':>12s}{'nginx':>12s}{'ratio':>9s}")
    print(
        f"{'all downloads done (s)':34s}{ours_boot:12.2f}{theirs_boot:12.2f}{theirs_boot / ours_boot:9.3f}   target >= 0.5"
    )
    print(f"{'per-node downloads p50 / p99 (s)':34s}{b50:6.2f}/{b99:5.2f}{n50:6.2f}/{n99:5.2f}")
    print(f"{'all nodes up (s)':34s}{up:12.2f}")
    print(f"{'per-node up p50 / p99 (s)':34s}{p50:6.2f}/{p99:5.2f}")
    print(f"{'failures':34s}{failures:12d}{sum(1 for n in theirs['nodes'] if n['error']):12d}   target 0")
    print(f"{'master CPU seconds':34s}{master_cpu:12.1f}")
    print(f"{'master peak RSS (MiB), open files':34s}{sampler.rss_kib / 1024:12.1f}{sampler.fds:12d}")
    print(f"{'simulator CPU seconds':34s}{ours['cpu_seconds']:12.1f}{theirs['cpu_seconds']:12.1f}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
