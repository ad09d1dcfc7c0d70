"""Many simulated nodes on one host: worker processes, each holding a few dozen nodes on shared threads."""

# A thread per node and eight per download (what a booted node runs, with a CPU of its own) swamp a 2-core
# host at a few hundred nodes: the threads spend the time on the GIL, and the simulator, not the master, is
# what gets measured. So the fleet is split over worker processes (forked before any thread), and in each
# the nodes share:
# - a few heartbeat threads, each beating whichever node is due next (MasterLink.beat);
# - a bound on downloads at once (LibCache's download_slots), as each real node downloads on its own NIC;
# - one reading of the host's load for their heartbeats, per second.
# Each node keeps its own MAC, registration, link token, job link, log shipping and libcache.
# A process holds at most NODES_PER_PROCESS nodes: a job fanned out to 250 nodes of one process woke some 750
# threads at once, whose handing of the GIL to each other cost the kernel more than the jobs (a warm
# `bpsh -a /bin/true` on 500 nodes: 2 processes 1.6 s and 2.3 CPU s, 16 processes 0.8 s and 0.7 CPU s).

from __future__ import annotations

import heapq
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from agent import protocol as p

HEARTBEAT_THREADS = 4  # per worker process: a heartbeat is a millisecond on loopback; 4 keep 500 nodes on time
DOWNLOADS_PER_PROCESS = 16  # object downloads at once per worker process
NODES_PER_PROCESS = 32


@dataclass
class NodeFigures:
    """One simulated node's times, in seconds from the fleet's start (a boot storm's per-node figures)."""

    mac: str
    number: int = -1
    booted: float | None = None  # stage 2's downloads done (--boot)
    up: float | None = None  # registered, stage 3 ready, job link open
    fetch: list[float] | None = None  # --fetch-only: when its downloads started and ended
    error: str = ""


class HeartbeatScheduler:
    """Calls each beat when it is due, on `threads` threads for all of them. A beat returns the seconds until
    it is due again, or None when its node stopped (it is then dropped)."""

    def __init__(self, threads: int = HEARTBEAT_THREADS) -> None:
        self._due: list[tuple[float, int, Callable[[], float | None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name="heartbeats", daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def add(self, beat: Callable[[], float | None]) -> None:
        with self._wake:
            heapq.heappush(self._due, (time.monotonic(), next(self._order), beat))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._due or self._due[0][0] > time.monotonic()):
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._stopped:
                    return
                _, _, beat = heapq.heappop(self._due)
            wait = beat()
            if wait is not None:
                with self._wake:
                    heapq.heappush(self._due, (time.monotonic() + wait, next(self._order), beat))
                    self._wake.notify()


def every_second(read: Callable[[], p.Load | None]) -> Callable[[], p.Load | None]:
    """`read`, called at most once a second: the nodes of one host share its load."""
    last: list[tuple[float, p.Load | None]] = []
    lock = threading.Lock()

    def cached() -> p.Load | None:
        with lock:
            if not last or time.monotonic() - last[0][0] >= 1.0:
                last[:] = [(time.monotonic(), read())]
            return last[0][1]

    return cached


def processes_for(count: int, cores: int) -> int:
    """The default number of worker processes: one for a small fleet (registrations in index order), else
    one per core, or more to hold at most NODES_PER_PROCESS each."""
    return 1 if count <= 16 else max(cores, -(-count // NODES_PER_PROCESS))


def split(count: int, first: int, processes: int) -> list[tuple[int, int]]:
    """(first index, count) of each worker process's share of the nodes, in index order."""
    processes = max(1, min(processes, count))
    shares = []
    for worker in range(processes):
        size = count // processes + (1 if worker < count % processes else 0)
        shares.append((first, size))
        first += size
    return [share for share in shares if share[1]]


def fork_workers(shares: list[tuple[int, int]], work: Callable[[int, int, int], int]) -> list[tuple[int, int]]:
    """Fork one process per share; each runs work(first, count, report_fd) and exits with its result.
    Returns (pid, read end of its report pipe) for each."""
    workers = []
    for first, count in shares:
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            code = 1
            try:
                code = work(first, count, report_w)
            finally:
                os._exit(code)
        os.close(report_w)
        workers.append((pid, report_r))
    return workers


def send_report(fd: int, kind: str, body: object) -> None:
    """One line to the parent: {"kind": ..., "body": ...}."""
    os.write(fd, (json.dumps({"kind": kind, "body": body}) + "\n").encode())


def figures_json(figures: list[NodeFigures]) -> list[dict]:
    return [asdict(f) for f in figures]
