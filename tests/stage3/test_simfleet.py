"""The simulator's plumbing: node shares per worker process, and one heartbeat scheduler for many nodes."""

import threading
import time

import pytest

from stage3.simfleet import NODES_PER_PROCESS, HeartbeatScheduler, every_second, processes_for, split


@pytest.mark.parametrize(
    ("count", "first", "processes", "expected"),
    [
        (10, 0, 1, [(0, 10)]),
        (10, 5, 3, [(5, 4), (9, 3), (12, 3)]),
        (2, 0, 8, [(0, 1), (1, 1)]),  # never an empty worker
        (1000, 0, 2, [(0, 500), (500, 500)]),
    ],
)
def test_split_gives_each_node_index_to_one_worker(count, first, processes, expected):
    shares = split(count, first, processes)
    assert shares == expected
    assert [i for start, size in shares for i in range(start, start + size)] == list(range(first, first + count))


@pytest.mark.parametrize(("count", "cores", "expected"), [(16, 2, 1), (17, 2, 2), (100, 8, 8), (1000, 2, 32)])
def test_a_worker_process_holds_a_few_dozen_nodes_at_most(count, cores, expected):
    processes = processes_for(count, cores)
    assert processes == expected
    assert count <= 16 or max(size for _, size in split(count, 0, processes)) <= NODES_PER_PROCESS


def test_scheduler_beats_each_node_on_its_own_interval_until_it_stops():
    beats: dict[str, list[float]] = {"fast": [], "slow": [], "stopping": []}
    lock = threading.Lock()

    def beat(name: str, interval: float, stop_after: int | None = None):
        def call() -> float | None:
            with lock:
                beats[name].append(time.monotonic())
                if stop_after is not None and len(beats[name]) >= stop_after:
                    return None  # its node stopped: dropped, never called again
            return interval

        return call

    scheduler = HeartbeatScheduler(threads=2)
    try:
        scheduler.add(beat("fast", 0.05))
        scheduler.add(beat("slow", 0.3))
        scheduler.add(beat("stopping", 0.05, stop_after=3))
        time.sleep(1.0)
    finally:
        scheduler.stop()
    assert 12 <= len(beats["fast"]) <= 22, len(beats["fast"])
    assert 3 <= len(beats["slow"]) <= 5, len(beats["slow"])
    assert len(beats["stopping"]) == 3
    gaps = [b - a for a, b in zip(beats["fast"], beats["fast"][1:])]
    assert min(gaps) >= 0.045


def test_scheduler_keeps_a_thousand_nodes_on_time_with_four_threads():
    due_late: list[float] = []
    lock = threading.Lock()
    interval = 0.5

    def make():
        last = [None]

        def call() -> float:
            now = time.monotonic()
            if last[0] is not None:
                with lock:
                    due_late.append(now - last[0] - interval)
            last[0] = now
            time.sleep(0.0005)  # a heartbeat's round trip on loopback
            return interval

        return call

    scheduler = HeartbeatScheduler(threads=4)
    try:
        for _ in range(1000):
            scheduler.add(make())
        time.sleep(2.2)
    finally:
        scheduler.stop()
    assert len(due_late) >= 3000
    assert sorted(due_late)[int(len(due_late) * 0.99)] < 0.25  # p99 lateness: well inside a heartbeat timeout


def test_every_second_reads_at_most_once_a_second():
    reads = []
    cached = every_second(lambda: reads.append(1) or len(reads))
    assert [cached() for _ in range(100)] == [1] * 100
    assert len(reads) == 1
