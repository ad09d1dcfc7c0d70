"""The node registry in SQLite: MAC -> node number, state, last seen, hardware, and every boot's timeline.

Numbers are handed out in order of first registration (0, 1, 2, ...) and never reused or changed, so a
node keeps its number, and with it its BeoNSS name and address, across reboots and master restarts.

Calls are synchronous and made from the server's event loop: with WAL and synchronous=NORMAL a statement
on a local file costs tens of microseconds and a commit does not wait for the disk, which is cheaper than
handing every heartbeat to a thread.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.protocol import (
    HEARTBEAT_LOST,
    BootEvent,
    Hardware,
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
"""
# columns added since the first release: (table, column, definition), added to an older database on open
ADDED_COLUMNS = (
    ("nodes", "link_token", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "address", "TEXT"),
    ("nodes", "load", "TEXT"),
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
    database's mode when it creates them; older ones are fixed here too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o600)


def _alive_state(ready: int) -> NodeState:
    return NodeState.UP if ready else NodeState.BOOTING


class Registry:
    def __init__(self, path: Path | str) -> None:
        try:
            if str(path) != ":memory:":
                _make_private(str(path))
            self._db = sqlite3.connect(str(path), isolation_level=None)  # explicit BEGIN/COMMIT below
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            for table, column, definition in ADDED_COLUMNS:
                present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"cannot open node registry {path}: {exc}", hint="check the --db path") from None
        self._db.row_factory = sqlite3.Row
        self.path = Path(path)
        self.generation = 0  # counts registrations and address moves: what the host table is built from changed

    def close(self) -> None:
        self._db.close()

    # --- writes ------------------------------------------------------------------------------------------

    def register(
        self, mac: str, stage: Stage, hardware: Hardware, now: float, keep_boots: int = 10, address: str | None = None
    ) -> NodeRecord:
        """Known MAC: same number. A registration at a stage not later than the node's last one is a new
        boot (stage 1 after stage 3, or stage 2 again when there is no stage 1); a later stage continues
        the boot (stage 1 -> kexec -> stage 2 -> stage 3 each register once). A new boot drops the
        node's events and log lines of boots before its last `keep_boots`."""
        mac = normalise_mac(mac)
        hw = json.dumps(asdict(hardware), sort_keys=True)
        token = secrets.token_urlsafe(24)
        self.generation += 1
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT number, stage, boot FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                (number,) = self._db.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM nodes").fetchone()
                self._db.execute(
                    "INSERT INTO nodes (number, mac, state, stage, boot, ready, first_seen, last_seen, hardware,"
                    " link_token, address) VALUES (?, ?, ?, ?, 1, 0, ?, ?, ?, ?, ?)",
                    (number, mac, NodeState.BOOTING, stage, now, now, hw, token, address),
                )
            else:
                new_boot = stage.order <= Stage(row["stage"]).order
                self._db.execute(
                    "UPDATE nodes SET stage = ?, boot = boot + ?, state = CASE WHEN ? THEN ? ELSE "
                    " (CASE WHEN ready THEN ? ELSE ? END) END, ready = CASE WHEN ? THEN 0 ELSE ready END,"
                    " last_seen = ?, uptime = NULL, uptime_at = NULL, hardware = ?, link_token = ?,"
                    " address = COALESCE(?, address) WHERE mac = ?",
                    (
                        stage,
                        int(new_boot),
                        new_boot,
                        NodeState.BOOTING,
                        NodeState.UP,
                        NodeState.BOOTING,
                        new_boot,
                        now,
                        hw,
                        token,
                        address,
                        mac,
                    ),
                )
                if new_boot:
                    oldest_kept = row["boot"] + 1 - keep_boots + 1  # the new boot is row["boot"] + 1
                    for table in ("events", "logs"):
                        self._db.execute(
                            f"DELETE FROM {table} WHERE number = ? AND boot < ?", (row["number"], oldest_kept)
                        )
        record = self.node_by_mac(mac)
        assert record is not None
        return record

    def heartbeat(
        self,
        mac: str,
        stage: Stage,
        uptime: float | None,
        now: float,
        address: str | None = None,
        load: Load | None = None,
    ) -> NodeRecord | None:
        """None: the MAC is not registered (the node must register again). `address`, when given, is the
        node's address now: a node whose DHCP lease moved it reports the new one here, between
        registrations, and the host table changes with it."""
        mac = normalise_mac(mac)
        with self._db:
            cursor = self._db.execute(
                "UPDATE nodes SET last_seen = ?, stage = ?, uptime = ?, uptime_at = ?,"
                " state = CASE WHEN ready THEN ? ELSE ? END WHERE mac = ?",
                (now, stage, uptime, now if uptime is not None else None, NodeState.UP, NodeState.BOOTING, mac),
            )
            if load is not None:
                self._db.execute("UPDATE nodes SET load = ? WHERE mac = ?", (json.dumps(asdict(load)), mac))
            moved = (
                address is not None
                and self._db.execute(
                    "UPDATE nodes SET address = ? WHERE mac = ? AND address IS NOT ?", (address, mac, address)
                ).rowcount
            )
        if cursor.rowcount == 0:
            return None
        if moved:
            self.generation += 1
        return self.node_by_mac(mac)

    def record_events(self, mac: str, events: Iterable[tuple[float, StageEvent]], now: float) -> int | None:
        """Store events (t = master time) in the node's current boot. stage3_ready marks the node UP."""
        mac = normalise_mac(mac)
        with self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT number, boot FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                return None
            number, boot = row
            events = list(events)
            self._db.executemany(
                "INSERT INTO events (number, boot, t, event, stage, detail) VALUES (?, ?, ?, ?, ?, ?)",
                [(number, boot, t, e.name, e.stage, e.detail) for t, e in events],
            )
            ready = any(e.name == BootEvent.STAGE3_READY for _, e in events)
            self._db.execute(
                "UPDATE nodes SET last_seen = ?, ready = MAX(ready, ?),"
                " state = CASE WHEN MAX(ready, ?) THEN ? ELSE ? END WHERE number = ?",
                (now, int(ready), int(ready), NodeState.UP, NodeState.BOOTING, number),
            )
        return number

    def record_logs(self, mac: str, lines: Iterable[tuple[float, LogLine]], now: float) -> int | None:
        mac = normalise_mac(mac)
        with self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT number, boot FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                return None
            number, boot = row
            self._db.executemany(
                "INSERT INTO logs (number, boot, t, stage, level, message) VALUES (?, ?, ?, ?, ?, ?)",
                [(number, boot, t, line.stage, line.level, line.message) for t, line in lines],
            )
            self._db.execute("UPDATE nodes SET last_seen = MAX(last_seen, ?) WHERE number = ?", (now, number))
        return number

    def mark_silent_down(self, cutoff: float, now: float) -> list[NodeRecord]:
        """Nodes not heard from since `cutoff` go DOWN; a heartbeat_lost event records when."""
        with self._db:
            self._db.execute("BEGIN")
            rows = self._db.execute(
                "SELECT number, boot, stage FROM nodes WHERE state != ? AND last_seen < ?", (NodeState.DOWN, cutoff)
            ).fetchall()
            for row in rows:
                self._db.execute("UPDATE nodes SET state = ? WHERE number = ?", (NodeState.DOWN, row["number"]))
                self._db.execute(
                    "INSERT INTO events (number, boot, t, event, stage, detail) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        row["number"],
                        row["boot"],
                        now,
                        HEARTBEAT_LOST,
                        row["stage"],
                        f"silent since before {cutoff:.3f}",
                    ),
                )
        return [r for r in (self.node_by_number(row["number"]) for row in rows) if r is not None]

    def mark_down(self, number: int, boot: int, now: float, event: str, detail: str) -> bool:
        """Record `event` in boot `boot` of node `number` and, if that is still its latest boot, mark it
        DOWN (bpctl: the node closed its link to reboot, halt or power off). A node that rebooted and
        registered again before this ran keeps its new state. False if the node is unknown."""
        with self._db:
            self._db.execute("BEGIN")
            row = self._db.execute("SELECT boot, stage FROM nodes WHERE number = ?", (number,)).fetchone()
            if row is None:
                return False
            self._db.execute(
                "INSERT INTO events (number, boot, t, event, stage, detail) VALUES (?, ?, ?, ?, ?, ?)",
                (number, boot, now, check_event_name(event), row["stage"], detail),
            )
            self._db.execute("UPDATE nodes SET state = ? WHERE number = ? AND boot = ?", (NodeState.DOWN, number, boot))
        return True

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
        )

    def node_by_mac(self, mac: str) -> NodeRecord | None:
        row = self._db.execute("SELECT * FROM nodes WHERE mac = ?", (normalise_mac(mac),)).fetchone()
        return self._record(row) if row else None

    def link_token(self, mac: str) -> str | None:
        """The token of the node's latest registration (None: no such node): what its messages must carry."""
        row = self._db.execute("SELECT link_token FROM nodes WHERE mac = ?", (normalise_mac(mac),)).fetchone()
        return row[0] if row else None

    def node_by_number(self, number: int) -> NodeRecord | None:
        row = self._db.execute("SELECT * FROM nodes WHERE number = ?", (number,)).fetchone()
        return self._record(row) if row else None

    def numbers_in_state(self, state: NodeState) -> set[int]:
        """The numbers of the nodes in `state`: one query, for a job to a thousand nodes."""
        return {number for (number,) in self._db.execute("SELECT number FROM nodes WHERE state = ?", (state,))}

    def nodes(self) -> list[NodeRecord]:
        return [self._record(row) for row in self._db.execute("SELECT * FROM nodes ORDER BY number")]

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
        rows = self._db.execute(
            "SELECT t, event, stage, detail FROM events WHERE number = ? AND boot = ? ORDER BY t, id", (number, boot)
        ).fetchall()
        return boot, [TimelineRecord(r["t"], r["event"], Stage(r["stage"]), r["detail"]) for r in rows]

    def state_counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in NodeState}
        for state, count in self._db.execute("SELECT state, COUNT(*) FROM nodes GROUP BY state"):
            counts[state] = count
        return counts

    def addresses(self) -> list[tuple[int, str | None]]:
        """(number, reported address) of every node, in number order: what the host table is built from,
        without decoding every node's hardware."""
        return [
            (number, address)
            for number, address in self._db.execute("SELECT number, address FROM nodes ORDER BY number")
        ]

    def logs(self, number: int, limit: int = 1000) -> list[tuple[float, str, str, str]]:
        rows = self._db.execute(
            "SELECT t, stage, level, message FROM logs WHERE number = ? ORDER BY t DESC, id DESC LIMIT ?",
            (number, limit),
        ).fetchall()
        return [tuple(r) for r in reversed(rows)]
