"""The node registry in SQLite: MAC -> node number, state, last seen, hardware, and every boot's timeline;
and the bpsh jobs (id, node, user, command, state), so that a restarted beoserv knows the jobs still
running on the nodes, and never gives an id twice.

Numbers are handed out in order of first registration (0, 1, 2, ...) and never reused or changed, so a
node keeps its number, and with it its BeoNSS name and address, across reboots and master restarts.

The nodes are kept in memory, loaded once when the registry opens: every call that reads or changes a
node (registration, heartbeat, "is it up" for a job, bpstat's list) answers from there at once, and is
never behind a write. The writes go to SQLite through beoboot.master.writebehind, batched on a thread of
their own, so the event loop never waits for SQLite. A registration must outlive a crash (a node's number
is never given to another): the server waits for it to be committed (committed()) before it answers.
Events and log lines are read from SQLite, after what was queued of them is committed.

Calls are made from one thread (the server's event loop).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from agent.protocol import (
    HEARTBEAT_LOST,
    Booted,
    BootEvent,
    Hardware,
    JobRow,
    JobState,
    Load,
    LogLine,
    NodeState,
    ProtocolError,
    StageEvent,
    check_event_name,
    from_dict,
    normalise_mac,
)
from agent.schema import Stage
from beoboot.errors import BeobootError
from beoboot.master.writebehind import WriteBehind

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    number INTEGER PRIMARY KEY,
    mac TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    stage TEXT NOT NULL,
    boot INTEGER NOT NULL,
    ready INTEGER NOT NULL DEFAULT 0,     -- stage3_ready seen in the current boot
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    uptime REAL,                          -- node-reported uptime ...
    uptime_at REAL,                       -- ... as of this master time
    hardware TEXT NOT NULL DEFAULT '{}',
    link_token TEXT NOT NULL DEFAULT '',  -- the job link's credential, new at every registration
    address TEXT                          -- the IPv4 address the node reported, if it did
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL REFERENCES nodes(number),
    boot INTEGER NOT NULL,
    t REAL NOT NULL,
    event TEXT NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_boot ON events(number, boot, t);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    number INTEGER NOT NULL REFERENCES nodes(number),
    boot INTEGER NOT NULL,
    t REAL NOT NULL,
    stage TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_node ON logs(number, t);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,               -- the master's job id: never given twice, across restarts too
    node INTEGER NOT NULL,
    uid INTEGER NOT NULL,                 -- the user who ran it: only they may reattach to it
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    status INTEGER                        -- once it ended
);
"""
# columns added since the first release: (table, column, definition), added to an older database on open
ADDED_COLUMNS = (
    ("nodes", "link_token", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "address", "TEXT"),
    ("nodes", "load", "TEXT"),
    ("nodes", "agent_version", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "booted", "TEXT NOT NULL DEFAULT '{}'"),  # what its last registration said it runs
    ("nodes", "clock_offset", "REAL"),  # the node's clock, behind the master's, as it last measured ...
    ("nodes", "clock_residual", "REAL"),  # ... and after it set its clock then
    ("logs", "source", "TEXT NOT NULL DEFAULT 'agent'"),  # agent, or kernel (/dev/kmsg)
    ("logs", "kernel_time", "REAL"),  # a kernel record's time stamp, seconds since its kernel booted
)


class RegistryError(BeobootError):
    """The registry database cannot be opened or a node reference names no node."""


@dataclass(frozen=True)
class NodeRecord:
    number: int
    mac: str
    state: NodeState
    stage: Stage
    boot: int
    last_seen: float
    uptime: float | None
    uptime_at: float | None
    hardware: Hardware
    link_token: str = field(default="", repr=False)
    address: str | None = None  # as the node last reported it (registration or heartbeat) when it said
    load: Load | None = None  # as of its last heartbeat that carried one
    ready: bool = False  # stage3_ready seen in the current boot
    first_seen: float = 0.0
    agent_version: str = ""  # as its last registration said
    booted: Booted = field(default_factory=Booted)  # as its last registration said: its kernel and images
    clock_offset: float | None = None  # as its last heartbeat said (agent.clocksync)
    clock_residual: float | None = None
    # the hardware as stored, kept so that a heartbeat's row write does not encode it again
    hardware_json: str = field(default="{}", repr=False, compare=False)

    def uptime_now(self, now: float) -> float | None:
        if self.uptime is None or self.uptime_at is None:
            return None
        # a down node's clock is not known to be running; freeze it at the last report
        until = self.last_seen if self.state is NodeState.DOWN else now
        return self.uptime + max(0.0, until - self.uptime_at)


@dataclass(frozen=True)
class TimelineRecord:
    t: float
    event: str
    stage: Stage
    detail: str


def _make_private(path: str) -> None:
    """Owner-only: the registry holds the nodes' job link tokens. SQLite gives its -wal and -shm files the
    database's mode when it creates them; older ones are fixed here too. (A file: the writer thread opens a
    connection of its own, which an in-memory database would not share.)"""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o600)


def _alive_state(ready: bool) -> NodeState:
    return NodeState.UP if ready else NodeState.BOOTING


# every column of a node's row, in the order _row() gives them
NODE_COLUMNS = (
    "number, mac, state, stage, boot, ready, first_seen, last_seen, uptime, uptime_at, hardware, link_token,"
    " address, load, agent_version, booted, clock_offset, clock_residual"
)
WRITE_NODE = f"INSERT OR REPLACE INTO nodes ({NODE_COLUMNS}) VALUES ({', '.join('?' * 18)})"
WRITE_EVENT = "INSERT INTO events (number, boot, t, event, stage, detail) VALUES (?, ?, ?, ?, ?, ?)"
WRITE_JOB = (
    "INSERT OR REPLACE INTO jobs (id, node, uid, command, state, started, pid, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
JOBS_KEPT = 10000  # ended jobs kept in the table; older ones are dropped when beoserv starts
WRITE_LOG = (
    "INSERT INTO logs (number, boot, t, stage, level, message, source, kernel_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(node: NodeRecord) -> tuple[object, ...]:
    load = json.dumps(asdict(node.load)) if node.load is not None else None
    return (
        node.number,
        node.mac,
        node.state,
        node.stage,
        node.boot,
        int(node.ready),
        node.first_seen,
        node.last_seen,
        node.uptime,
        node.uptime_at,
        node.hardware_json,
        node.link_token,
        node.address,
        load,
        node.agent_version,
        json.dumps(asdict(node.booted), sort_keys=True),
        node.clock_offset,
        node.clock_residual,
    )


def _connect(path: Path | str) -> sqlite3.Connection:
    # explicit BEGIN/COMMIT (autocommit otherwise); used by one thread at a time, not always the one that opened it
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")  # readers (timelines) never wait for the writer
    db.execute("PRAGMA synchronous=NORMAL")  # a commit does not wait for the disk; WAL keeps it consistent
    return db


class Registry:
    def __init__(self, path: Path | str) -> None:
        try:
            _make_private(str(path))
            self._db = _connect(path)  # reads of events and log lines, on the caller's thread
            self._db.executescript(SCHEMA)
            for table, column, definition in ADDED_COLUMNS:
                present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            self._db.row_factory = sqlite3.Row
            rows = self._db.execute("SELECT * FROM nodes ORDER BY number").fetchall()
            self._db.execute("DELETE FROM jobs WHERE id <= (SELECT MAX(id) FROM jobs) - ?", (JOBS_KEPT,))
            job_rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            writer = _connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"cannot open node registry {path}: {exc}", hint="check the --db path") from None
        self._by_number: dict[int, NodeRecord] = {}  # in number order: numbers are given in order
        self._by_mac: dict[str, NodeRecord] = {}
        for row in rows:
            self._keep(self._record(row))
        self.jobs_at_start: list[tuple[JobRow, int]] = []  # (row, uid): what the last beoserv left
        for job in job_rows:
            try:
                state = JobState(job["state"])
            except ValueError:
                continue  # a state this version does not know: a row it cannot take back
            started = JobRow(job["id"], job["node"], job["pid"], job["command"], state, job["started"], job["status"])
            self.jobs_at_start.append((started, job["uid"]))
        self.last_job_id = job_rows[-1]["id"] if job_rows else 0
        self._writes = WriteBehind(writer)
        self.path = Path(path)
        self.generation = 0  # counts registrations and address moves: what the host table is built from changed

    def close(self) -> None:
        """Write what is queued, then close (a clean stop loses nothing)."""
        self._writes.close()
        self._db.close()

    async def committed(self) -> None:
        """Return once every change made so far is in the database (the error of its write if it failed)."""
        await self._writes.committed()

    def flush(self) -> None:
        """committed(), waiting on this thread."""
        self._writes.flush()

    def _keep(self, node: NodeRecord) -> NodeRecord:
        self._by_number[node.number] = node
        self._by_mac[node.mac] = node
        return node

    def _changed(self, node: NodeRecord) -> NodeRecord:
        """`node` as it is now, in memory and queued for the database."""
        self._writes.upsert(node.number, WRITE_NODE, _row(self._keep(node)))
        return node

    # --- writes ------------------------------------------------------------------------------------------

    def register(
        self,
        mac: str,
        stage: Stage,
        hardware: Hardware,
        now: float,
        keep_boots: int = 10,
        address: str | None = None,
        agent_version: str = "",
        booted: Booted | None = None,
    ) -> NodeRecord:
        """Known MAC: same number. A registration at a stage not later than the node's last one is a new
        boot (stage 1 after stage 3, or stage 2 again when there is no stage 1); a later stage continues
        the boot (stage 1 -> kexec -> stage 2 -> stage 3 each register once). A new boot drops the
        node's events and log lines of boots before its last `keep_boots`."""
        mac = normalise_mac(mac)
        token = secrets.token_urlsafe(24)
        hardware_json = json.dumps(asdict(hardware), sort_keys=True)
        self.generation += 1
        old = self._by_mac.get(mac)
        if old is None:
            number = next(reversed(self._by_number)) + 1 if self._by_number else 0
            node = NodeRecord(
                number=number,
                mac=mac,
                state=NodeState.BOOTING,
                stage=stage,
                boot=1,
                last_seen=now,
                uptime=None,
                uptime_at=None,
                hardware=hardware,
                link_token=token,
                address=address,
                first_seen=now,
                hardware_json=hardware_json,
                agent_version=agent_version,
                booted=booted or Booted(),
            )
            return self._changed(node)
        new_boot = stage.order <= old.stage.order
        ready = old.ready and not new_boot
        node = replace(
            old,
            stage=stage,
            boot=old.boot + new_boot,
            state=_alive_state(ready),
            ready=ready,
            last_seen=now,
            uptime=None,
            uptime_at=None,
            hardware=hardware,
            hardware_json=hardware_json,
            link_token=token,
            address=address or old.address,
            agent_version=agent_version,
            booted=booted or Booted(),
        )
        if new_boot:
            oldest_kept = node.boot - keep_boots + 1
            for table in ("events", "logs"):
                self._writes.execute(f"DELETE FROM {table} WHERE number = ? AND boot < ?", [(node.number, oldest_kept)])
        return self._changed(node)

    def heartbeat(
        self,
        mac: str,
        stage: Stage,
        uptime: float | None,
        now: float,
        address: str | None = None,
        load: Load | None = None,
        clock: tuple[float | None, float | None] = (None, None),
        hardware: Hardware | None = None,
    ) -> NodeRecord | None:
        """None: the MAC is not registered (the node must register again). `address`, when given, is the
        node's address now: a node whose DHCP lease moved it reports the new one here, between
        registrations, and the host table changes with it. `clock`: the offset the node measured, and
        what was left after it set its clock (None, None: it measured none yet). `hardware`, when given, is
        what the node has bound since it registered (the drivers the master sent it)."""
        old = self._by_mac.get(normalise_mac(mac))
        if old is None:
            return None
        if hardware is not None:
            old = replace(old, hardware=hardware, hardware_json=json.dumps(asdict(hardware), sort_keys=True))
        moved = address is not None and address != old.address
        if moved:
            self.generation += 1
        return self._changed(
            replace(
                old,
                last_seen=now,
                stage=stage,
                uptime=uptime,
                uptime_at=now if uptime is not None else None,
                state=_alive_state(old.ready),
                load=load if load is not None else old.load,
                address=address if moved else old.address,
                clock_offset=clock[0] if clock[0] is not None else old.clock_offset,
                clock_residual=clock[1] if clock[0] is not None else old.clock_residual,
            )
        )

    def record_events(self, mac: str, events: Iterable[tuple[float, StageEvent]], now: float) -> int | None:
        """Store events (t = master time) in the node's current boot. stage3_ready marks the node UP."""
        old = self._by_mac.get(normalise_mac(mac))
        if old is None:
            return None
        events = list(events)
        self._writes.execute(WRITE_EVENT, [(old.number, old.boot, t, e.name, e.stage, e.detail) for t, e in events])
        ready = old.ready or any(e.name == BootEvent.STAGE3_READY for _, e in events)
        self._changed(replace(old, last_seen=now, ready=ready, state=_alive_state(ready)))
        return old.number

    def record_logs(self, mac: str, lines: Iterable[tuple[float, LogLine]], now: float) -> int | None:
        """Store log lines in the node's current boot; dropped (counted: dropped_lines) while the database
        cannot be written and a great many wait."""
        old = self._by_mac.get(normalise_mac(mac))
        if old is None:
            return None
        rows = [
            (old.number, old.boot, t, line.stage, line.level, line.message, line.source, line.kernel_time)
            for t, line in lines
        ]
        self._writes.execute(WRITE_LOG, rows, droppable=True)
        if now > old.last_seen:
            self._changed(replace(old, last_seen=now))
        return old.number

    @property
    def dropped_lines(self) -> int:
        return self._writes.dropped

    def mark_silent_down(self, cutoff: float, now: float) -> list[NodeRecord]:
        """Nodes not heard from since `cutoff` go DOWN; a heartbeat_lost event records when."""
        silent = [n for n in self._by_number.values() if n.state is not NodeState.DOWN and n.last_seen < cutoff]
        for node in silent:
            detail = f"silent since before {cutoff:.3f}"
            self._writes.execute(WRITE_EVENT, [(node.number, node.boot, now, HEARTBEAT_LOST, node.stage, detail)])
        return [self._changed(replace(node, state=NodeState.DOWN)) for node in silent]

    def mark_down(self, number: int, boot: int, now: float, event: str, detail: str) -> bool:
        """Record `event` in boot `boot` of node `number` and, if that is still its latest boot, mark it
        DOWN (bpctl: the node closed its link to reboot, halt or power off). A node that rebooted and
        registered again before this ran keeps its new state. False if the node is unknown."""
        node = self._by_number.get(number)
        if node is None:
            return False
        self._writes.execute(WRITE_EVENT, [(number, boot, now, check_event_name(event), node.stage, detail)])
        if node.boot == boot:
            self._changed(replace(node, state=NodeState.DOWN))
        return True

    def record_job(self, row: JobRow, uid: int) -> None:
        """A job as it is now (started, running, ended), for a restarted beoserv to take it back."""
        self._writes.upsert(
            ("job", row.job),
            WRITE_JOB,
            (row.job, row.node, uid, row.command, row.state, row.started, row.pid, row.status),
        )

    # --- reads -------------------------------------------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> NodeRecord:
        try:
            hardware = from_dict(Hardware, json.loads(row["hardware"]))
        except (ProtocolError, ValueError):
            hardware = Hardware()  # written by an older master; the node sends it again when it registers
        try:
            load = from_dict(Load, json.loads(row["load"])) if row["load"] else None
        except (ProtocolError, ValueError):
            load = None
        try:
            booted = from_dict(Booted, json.loads(row["booted"]))
        except (ProtocolError, ValueError):
            booted = Booted()  # the node says it again when it registers
        return NodeRecord(
            number=row["number"],
            mac=row["mac"],
            state=NodeState(row["state"]),
            stage=Stage(row["stage"]),
            boot=row["boot"],
            last_seen=row["last_seen"],
            uptime=row["uptime"],
            uptime_at=row["uptime_at"],
            hardware=hardware,
            link_token=row["link_token"],
            address=row["address"],
            load=load,
            ready=bool(row["ready"]),
            first_seen=row["first_seen"],
            hardware_json=row["hardware"],
            agent_version=row["agent_version"],
            booted=booted,
            clock_offset=row["clock_offset"],
            clock_residual=row["clock_residual"],
        )

    def node_by_mac(self, mac: str) -> NodeRecord | None:
        return self._by_mac.get(normalise_mac(mac))

    def link_token(self, mac: str) -> str | None:
        """The token of the node's latest registration (None: no such node): what its messages must carry."""
        node = self.node_by_mac(mac)
        return node.link_token if node else None

    def node_by_number(self, number: int) -> NodeRecord | None:
        return self._by_number.get(number)

    def numbers_in_state(self, state: NodeState) -> set[int]:
        """The numbers of the nodes in `state`."""
        return {node.number for node in self._by_number.values() if node.state is state}

    def nodes(self) -> list[NodeRecord]:
        return list(self._by_number.values())

    def find(self, ref: str) -> NodeRecord:
        """A node by number ('3'), BeoNSS name ('.3'), hostname ('n3') or MAC."""
        text = ref.strip()
        digits = text.lstrip(".").lstrip("abcdefghijklmnopqrstuvwxyz") if ":" not in text else ""
        record = None
        if digits.isascii() and digits.isdigit():  # not "²", which isdigit() but int() refuses
            # a number beyond SQLite's 64-bit INTEGER names no node (it cannot be bound to a query)
            record = self.node_by_number(int(digits)) if len(digits) <= 18 else None
        elif ":" in text or "-" in text:
            try:
                record = self.node_by_mac(text)
            except ProtocolError:
                record = None
        if record is None:
            raise RegistryError(f"no node {ref!r}", hint="name a node by number (3), '.3', 'n3' or MAC; see bpstat")
        return record

    def timeline(self, number: int, boot: int | None = None) -> tuple[int, list[TimelineRecord]]:
        """The events of one boot (default: the current one), in time order."""
        if boot is None:
            record = self.node_by_number(number)
            boot = record.boot if record else 0
        self.flush()
        rows = self._db.execute(
            "SELECT t, event, stage, detail FROM events WHERE number = ? AND boot = ? ORDER BY t, id", (number, boot)
        ).fetchall()
        return boot, [TimelineRecord(r["t"], r["event"], Stage(r["stage"]), r["detail"]) for r in rows]

    def state_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in NodeState}
        for node in self._by_number.values():
            counts[node.state.value] += 1
        return counts

    def addresses(self) -> list[tuple[int, str | None]]:
        """(number, reported address) of every node, in number order: what the host table is built from."""
        return [(node.number, node.address) for node in self._by_number.values()]

    def logs(self, number: int, limit: int = 1000) -> list[tuple[float, str, str, str]]:
        return [(t, stage, level, message) for t, stage, level, message, _, _ in self.log_entries(number, limit)]

    def log_entries(
        self, number: int, limit: int = 1000, source: str | None = None
    ) -> list[tuple[float, str, str, str, str, float | None]]:
        """The node's last `limit` log lines, of every boot kept, oldest first: (t, stage, level, message,
        source, kernel_time); only those of `source` (agent, kernel) when given."""
        self.flush()
        where = "number = ?" + (" AND source = ?" if source is not None else "")
        rows = self._db.execute(
            f"SELECT t, stage, level, message, source, kernel_time FROM logs WHERE {where}"
            " ORDER BY t DESC, id DESC LIMIT ?",
            (number, source, limit) if source is not None else (number, limit),
        ).fetchall()
        return [tuple(r) for r in reversed(rows)]
