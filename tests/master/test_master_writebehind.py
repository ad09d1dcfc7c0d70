"""Registry writes batched off the event loop (beoboot.master.writebehind), against real SQLite files: a
row written many times in a batch is written once, a batch the database refuses is kept and written once
it can be, nothing queued is lost at a clean stop, and a beoserv whose database is locked by someone else
still answers its nodes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import pytest
import requests
from master_helpers import MasterProcess

from agent import protocol as p
from beoboot.master import writebehind
from beoboot.master.writebehind import WriteBehind

UPSERT = "INSERT OR REPLACE INTO t (k, v) VALUES (?, ?)"
APPEND = "INSERT INTO lines (v) VALUES (?)"


def database(tmp_path) -> str:
    path = str(tmp_path / "w.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("CREATE TABLE lines (v TEXT)")
    db.close()
    return path


def writer(path: str) -> WriteBehind:
    return WriteBehind(sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.1))


def test_rows_of_one_key_are_written_once_per_batch_statements_in_order(tmp_path):
    path = database(tmp_path)
    writes = writer(path)
    for n in range(1000):
        writes.upsert(7, UPSERT, (7, f"value {n}"))
        writes.execute(APPEND, [(str(n),)])
    writes.flush()
    assert writes.batches <= 2  # a thousand heartbeats of one node: one or two transactions, not a thousand
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM t").fetchall() == [("value 999",)]
    assert [int(v) for (v,) in db.execute("SELECT v FROM lines ORDER BY rowid")] == list(range(1000))
    writes.close()


def test_a_refused_batch_is_kept_and_written_when_the_database_can_be_written(tmp_path):
    path = database(tmp_path)
    writes = writer(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    writes.upsert(1, UPSERT, (1, "kept"))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        writes.flush()
    writes.upsert(2, UPSERT, (2, "later"))
    holder.execute("ROLLBACK")
    writes.flush()
    assert sqlite3.connect(path).execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(1, "kept"), (2, "later")]
    writes.close()


def test_log_lines_beyond_the_bound_are_dropped_and_counted_while_the_database_is_locked(tmp_path, monkeypatch):
    monkeypatch.setattr(writebehind, "MAX_PENDING", 10)
    path = database(tmp_path)
    writes = writer(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    for n in range(4):
        writes.execute(APPEND, [(f"{n}a",), (f"{n}b",), (f"{n}c",)], droppable=True)
    assert writes.dropped == 3
    holder.execute("ROLLBACK")
    writes.flush()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM lines").fetchone() == (9,)
    writes.close()


def test_committed_wakes_the_writer_at_once(tmp_path):
    path = database(tmp_path)
    writes = WriteBehind(sqlite3.connect(path, isolation_level=None, check_same_thread=False), interval=60)

    async def register() -> float:
        started = time.monotonic()
        writes.upsert(1, UPSERT, (1, "a registration"))
        await writes.committed()
        return time.monotonic() - started

    assert asyncio.run(register()) < 5  # not the 60 s interval
    writes.close()


def test_close_writes_everything_queued(tmp_path):
    path = database(tmp_path)
    writes = WriteBehind(sqlite3.connect(path, isolation_level=None, check_same_thread=False), interval=60)
    writes.execute(APPEND, [(str(n),) for n in range(500)])
    writes.close()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM lines").fetchone() == (500,)


# --- beoserv ---------------------------------------------------------------------------------------------


@pytest.fixture
def master(tmp_path):
    (tmp_path / "boot").mkdir()
    server = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    yield server
    server.stop()


def register(master, mac: str) -> str:
    answer = requests.post(master.url + p.REGISTER_PATH, json={"mac": mac, "stage": "stage3"}, timeout=10)
    answer.raise_for_status()
    return answer.json()["link_token"]


def test_heartbeats_are_answered_while_another_program_holds_the_database(master):
    """An administrator's sqlite3 shell holds the registry: beoserv's writer waits, its event loop does not."""
    mac = "52:54:00:00:0d:01"
    token = register(master, mac)
    holder = sqlite3.connect(master.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(5):
            started = time.monotonic()
            answer = requests.post(
                master.url + p.HEARTBEAT_PATH,
                json={"mac": mac, "stage": "stage3", "uptime": 12.5},
                headers={p.LINK_TOKEN_HEADER: token},
                timeout=10,
            )
            assert answer.status_code == 200 and time.monotonic() - started < 1.0
        nodes = requests.get(master.url + p.NODES_PATH, timeout=5).json()["nodes"]
        assert nodes[0]["uptime"] >= 12.5  # the node's state is beoserv's at once, written or not
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 10
    while sqlite3.connect(master.db).execute("SELECT uptime FROM nodes").fetchone() != (12.5,):
        assert time.monotonic() < deadline, master.log_text()
        time.sleep(0.1)


def test_a_clean_stop_writes_every_line_it_accepted(master):
    """Lines accepted while the database was held are still queued when beoserv is told to stop: it writes
    them once it can, then exits."""
    mac = "52:54:00:00:0d:02"
    token = register(master, mac)
    lines = [{"mono": float(n), "stage": "stage3", "level": "INFO", "message": f"line {n}"} for n in range(300)]
    holder = sqlite3.connect(master.db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for start in range(0, 300, 100):
            answer = requests.post(
                master.url + p.LOGS_PATH,
                json={"mac": mac, "sent_mono": 300.0, "lines": lines[start : start + 100], "dropped": 0},
                headers={p.LINK_TOKEN_HEADER: token},
                timeout=10,
            )
            assert answer.status_code == 200, answer.text
        master.signal(signal.SIGTERM)
        time.sleep(1)
        assert master.proc.poll() is None  # still waiting to write them
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert master.proc.wait(15) == 0
    assert sqlite3.connect(master.db).execute("SELECT COUNT(*) FROM logs").fetchone() == (300,)
