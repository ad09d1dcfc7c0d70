"""SQLite writes off the event loop, in batches: one writer thread, one transaction per interval.

Every heartbeat, event and log line was a transaction on beoserv's event loop: a thousand nodes are
hundreds a second, each a few statements and a commit, and while SQLite waits (a lock, a checkpoint, a slow
disk) no node is answered. The registry (beoboot.master.registry) keeps its nodes in memory and hands the
writes here: a row that is written again before its batch commits is written once (upsert: the latest row
per key), statements are appended in order, and the writer thread commits everything queued every
INTERVAL, or at once when someone waits for it (committed(), flush()) or BATCH statements are queued.

A batch that fails (the database locked by someone else for longer than SQLite waits, a full disk) is
rolled back and kept, retried at the next interval, and reported once per interval; whoever waits for it
gets the error. Statements marked droppable (log lines) beyond MAX_PENDING are dropped, counted, rather
than grow without bound while the database cannot be written.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from beoboot.master.exhaustion import Tally

log = logging.getLogger("beoserv")

INTERVAL = 0.2  # seconds between commits while writes come in: what a crash may lose of heartbeats and logs
BATCH = 2000  # statements (rows) queued that make the writer commit before the interval is up
MAX_PENDING = 200_000  # rows of droppable statements kept while the database cannot be written
STOP_TRIES = 5  # batches tried at a clean stop before changes are given up (each waits out SQLite's timeout)


@dataclass
class _Statement:
    sql: str
    rows: Sequence[tuple[Any, ...]]
    droppable: bool


@dataclass
class _Waiter:
    upto: int  # the sequence number of the last change it waits for
    loop: asyncio.AbstractEventLoop | None  # None: a thread waiting on `event`
    future: asyncio.Future[None] | None = None
    event: threading.Event | None = None
    error: BaseException | None = None


class WriteBehind:
    def __init__(self, db: sqlite3.Connection, interval: float = INTERVAL) -> None:
        """`db` is the writer's own connection (check_same_thread=False, autocommit): from here on only the
        writer thread uses it."""
        self._db = db
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._upserts: dict[Hashable, tuple[str, tuple[Any, ...]]] = {}
        self._statements: list[_Statement] = []
        self._pending_rows = 0
        self._queued = 0  # sequence number of the last change queued
        self._committed = 0  # ...and of the last one committed
        self._waiters: list[_Waiter] = []
        self._stopping = False
        self.dropped = 0  # droppable rows dropped since start
        self.batches = 0  # transactions committed (figures, tests)
        self._failures = Tally()
        self._thread = threading.Thread(target=self._run, name="registry-writer", daemon=True)
        self._thread.start()

    # --- the loop's side ------------------------------------------------------------------------------------

    def upsert(self, key: Hashable, sql: str, row: tuple[Any, ...]) -> None:
        """Write `row` with `sql`, unless another row of `key` is queued after it before the batch commits."""
        with self._lock:
            self._upserts[key] = (sql, row)
            self._queued += 1
            self._pending_rows += 1
            self._nudge()

    def execute(self, sql: str, rows: Sequence[tuple[Any, ...]], droppable: bool = False) -> None:
        """Run `sql` once per row, in order with the other statements."""
        with self._lock:
            if droppable and self._pending_rows + len(rows) > MAX_PENDING:
                self.dropped += len(rows)
                return
            self._statements.append(_Statement(sql, rows, droppable))
            self._queued += 1
            self._pending_rows += len(rows)
            self._nudge()

    def _nudge(self) -> None:
        if self._pending_rows >= BATCH:
            self._wake.set()

    async def committed(self) -> None:
        """Return once every change queued so far is committed; the error of its batch if that failed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._committed >= self._queued:
                return
            waiter = _Waiter(self._queued, loop, future=loop.create_future())
            self._waiters.append(waiter)
        self._wake.set()
        assert waiter.future is not None
        await waiter.future

    def flush(self) -> None:
        """committed(), for a thread (a test, a command, the end of beoserv)."""
        with self._lock:
            if self._committed >= self._queued:
                return
            waiter = _Waiter(self._queued, None, event=threading.Event())
            self._waiters.append(waiter)
        self._wake.set()
        assert waiter.event is not None
        waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def close(self) -> None:
        """Write what is queued, then stop the thread and close its connection."""
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._db.close()

    # --- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stopping:
                self._write_batch()
                continue
            # a clean stop writes everything: a batch that fails (a lock someone holds) is tried again
            for _ in range(STOP_TRIES):
                if self._write_batch():
                    return
            log.error("registry writer: stopping with changes not written (see above)")
            return

    def _write_batch(self) -> bool:
        """Commit what is queued; False if it failed (and was kept, or dropped if it can never succeed)."""
        with self._lock:
            upserts, self._upserts = self._upserts, {}
            statements, self._statements = self._statements, []
            upto, pending = self._queued, self._pending_rows
            self._pending_rows = 0
        if not upserts and not statements:
            self._answer(upto, None)
            return True
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, row in upserts.values():
                    self._db.execute(sql, row)
                for statement in statements:
                    self._db.executemany(statement.sql, statement.rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except Exception as exc:
            # the database busy, full or unreachable: the batch may succeed later. Anything else (a
            # constraint, a value SQLite cannot bind) would fail for ever and hold up every later write
            kept = isinstance(exc, sqlite3.OperationalError)
            if kept:
                self._keep(upserts, statements, pending)
            if (counted := self._failures.count()) is not None:
                log.error(
                    "registry writer: %d batch(es) of changes not written since the last line: %s: %s; %s",
                    counted,
                    type(exc).__name__,
                    exc,
                    "kept, retried" if kept else "dropped",
                )
            self._answer(upto, exc)
            return False
        self.batches += 1
        self._answer(upto, None)
        return True

    def _keep(self, upserts: dict[Hashable, Any], statements: list[_Statement], pending: int) -> None:
        """A failed batch goes back in front of what was queued meanwhile (a row queued since is newer)."""
        with self._lock:
            self._upserts = {**upserts, **self._upserts}
            self._statements = statements + self._statements
            self._pending_rows += pending

    def _answer(self, upto: int, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                self._committed = upto
            done = [waiter for waiter in self._waiters if waiter.upto <= upto]
            self._waiters = [waiter for waiter in self._waiters if waiter.upto > upto]
        for waiter in done:
            if waiter.loop is not None:
                assert waiter.future is not None
                waiter.loop.call_soon_threadsafe(_settle, waiter.future, error)
            else:
                assert waiter.event is not None
                waiter.error = error
                waiter.event.set()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
