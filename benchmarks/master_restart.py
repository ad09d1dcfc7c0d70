#!/usr/bin/env python3
"""A beoserv restart under running jobs: how long until every node's link is back, and what is sent again.

    .venv/bin/python benchmarks/master_restart.py [--nodes 1000] [--down 4] [--signal KILL]

Starts beoserv (loopback, a free port) and `python -m stage3.simnode --count N --master-lost keep`, runs
`bpsh -a` with a job on every node that prints a line every --every s for --run seconds, kills beoserv
(SIGKILL, or SIGTERM: an upgrade) a third of the way in, starts it again --down seconds later on the same
port and database, and prints:
  * the time from the new beoserv's start until every node's job link is up again;
  * the time until bpsh reattached, and until all its jobs had ended;
  * the output bytes the nodes sent when resumed (what bpsh did not have: written while beoserv was away,
    or lost in the killed beoserv; the simulated nodes' log lines), and those beoserv dropped as
    duplicates (sent again although bpsh had them: none, when the offsets are right);
  * whether bpsh printed every node's every line exactly once, and its exit status.
Needs root (simulated nodes chroot their jobs).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bpsh_vs_ssh import BPSH, free_port, stop, wait_for

SENT_AGAIN = re.compile(rb"resumed on a new link: (\d+) bytes of output it held sent")
DROPPED = re.compile(r"jobs: (\d+) output bytes sent again by nodes were dropped as duplicates")
LINK_UP = re.compile(r"node \d+ \(\S+\) job link up")


def start_beoserv(work: Path, port: int) -> tuple[subprocess.Popen, float]:
    log = work / "beoserv.log"
    argv = [sys.executable, "-m", "beoboot.master.cli", "beoserv", "--root", str(work / "boot")]
    argv += ["--listen", f"127.0.0.1:{port}", "--db", str(work / "nodes.db"), "--bpsh-socket", str(work / "bpsh.sock")]
    with open(log, "ab") as out:
        offset = out.tell()
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "listening on" not in log.read_text(errors="replace")[offset:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"beoserv did not start:\n{log.read_text(errors='replace')[offset:]}")
        time.sleep(0.05)
    return proc, started


def nodes_heard(out: Path) -> set[bytes]:
    """The nodes bpsh -p printed a line of so far."""
    return {line.split(b":")[0] for line in out.read_bytes().splitlines()}


def links_up(log: Path, offset: int) -> int:
    return len(LINK_UP.findall(log.read_text(errors="replace")[offset:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--down", type=float, default=4.0, help="seconds beoserv stays down")
    parser.add_argument("--run", type=float, default=30.0, help="seconds each job prints for")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between a job's lines (a fork each)")
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    args = parser.parse_args()
    lines = int(args.run / args.every)
    script = f"i=0; while [ $i -lt {lines} ]; do echo line $i; i=$((i+1)); sleep {args.every:g}; done"
    with tempfile.TemporaryDirectory(prefix="master-restart-") as tmp:
        work = Path(tmp)
        (work / "boot").mkdir()
        port = free_port()
        master, _ = start_beoserv(work, port)
        url = f"http://127.0.0.1:{port}"
        sim_log = work / "simnode.log"
        argv = [sys.executable, "-m", "stage3.simnode", "--master", url, "--dir", str(work / "nodes")]
        argv += ["--count", str(args.nodes), "--master-lost", "keep"]
        sim = subprocess.Popen(argv, stdout=open(sim_log, "wb"), stderr=subprocess.STDOUT)
        bpsh = None
        try:
            wait_for(sim_log, f"simnode: {args.nodes} nodes up", sim, timeout=1800)
            bpsh_argv = [sys.executable, "-IS", str(BPSH), "--socket", str(work / "bpsh.sock"), "-p", "-n"]
            bpsh_argv += ["--cache", "/usr/bin/sleep", "-a", "sh", "-c", script]
            bpsh = subprocess.Popen(bpsh_argv, stdout=open(work / "out", "wb"), stderr=open(work / "err", "wb"))
            deadline = time.monotonic() + 600
            while len(nodes_heard(work / "out")) < args.nodes:
                if bpsh.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"bpsh -a did not start on every node: {(work / 'err').read_text()}")
                time.sleep(0.2)
            time.sleep(args.run / 3)
            master.send_signal(getattr(signal, f"SIG{args.signal}"))
            master.wait(60)
            time.sleep(args.down)
            log = work / "beoserv.log"
            offset = len(log.read_text(errors="replace"))
            master, started = start_beoserv(work, port)
            all_back = reattached = 0.0
            while not (all_back and reattached):  # whichever comes first, each timed on its own
                now = time.monotonic() - started
                if now > 600:
                    raise SystemExit(f"only {links_up(log, offset)} of {args.nodes} links back after 600 s")
                if not reattached and b"reattached" in (work / "err").read_bytes():
                    reattached = now
                if not all_back and links_up(log, offset) >= args.nodes:
                    all_back = now
                time.sleep(0.05)
            status = bpsh.wait(1800)
            ended = time.monotonic() - started
        finally:
            if bpsh is not None and bpsh.poll() is None:
                bpsh.kill()
            stop(sim)
            stop(master)
        out = (work / "out").read_bytes().splitlines()
        expected = Counter(b"%d: line %d" % (node, i) for node in range(args.nodes) for i in range(lines))
        got = Counter(out)
        sent_again = sum(int(n) for n in SENT_AGAIN.findall(sim_log.read_bytes()))
        dropped = DROPPED.search((work / "beoserv.log").read_text(errors="replace"))
        print(f"nodes {args.nodes}, beoserv SIG{args.signal} and down {args.down:g} s, jobs of {args.run:g} s")
        print(f"  every link back     {all_back:7.2f} s after the new beoserv started")
        print(f"  bpsh reattached     {reattached:7.2f} s after it;  all jobs ended {ended:7.2f} s after")
        print(f"  bytes sent again    {sent_again} (by the nodes on resume, from what bpsh had)")
        print(f"  duplicates dropped  {dropped.group(1) if dropped else '?'} bytes (by beoserv)")
        missing, extra = expected - got, got - expected
        print(
            f"  output              {sum(got.values())} lines; missing {sum(missing.values())}, "
            f"duplicated or foreign {sum(extra.values())}; bpsh exit status {status}"
        )
        return 0 if not missing and not extra and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
