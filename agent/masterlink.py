"""The agent's client for the master (`beoserv`): register, heartbeat, stage events, log shipping.
(Boot files come through agent.download, which checks them against their pins.)

Nodes open every connection. The master may be unreachable (not up yet, restarting, the network not
configured yet in stage 1): registration and downloads retry with exponential backoff and jitter, so a
thousand nodes that lost the master together do not come back in one synchronised wave; events and log
lines are buffered (bounded) and sent when the master answers again. Nothing here blocks for longer than
one request timeout unless the caller asked to wait (register, download).

Standard library only (HTTP is agent.httpclient's); never imports beoboot.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent import __version__
from agent import protocol as p
from agent.clocksync import ClockKeeper
from agent.download import Backoff
from agent.httpclient import Connection, HttpError, Response, retry_after
from agent.schema import Stage

T = TypeVar("T")

# where a registration is sent from: a privileged port, which on a node only root binds, is how the master
# tells the node's agent from a user's job on it (beoboot.master.admission); rresvport's range
RESERVED_PORTS = range(512, 1024)
PORT_TRIES = 16  # ports tried when the one picked is taken (another registration, or its TIME_WAIT)


class MasterLinkError(Exception):
    """The master refused a message or could not be reached within the allowed attempts."""


class RegistrationRefused(MasterLinkError):
    """The master answered 403 to a registration: it does not take this machine as a node (the reason is
    in the message). Retried with backoff, as an unreachable master is: an operator may fix it."""


class MasterBusy(MasterLinkError):
    """The master answered 503: a resource of its is exhausted for now. Retried after the Retry-After it
    gave (at least), never taken for a refusal."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def busy_wait(value: str | None) -> float:
    """How long a busy master (503) asks us to wait: its Retry-After (agent.httpclient.retry_after), or 1 s
    when it gives none that reads."""
    wait = retry_after(value)
    return 1.0 if wait is None else wait


class MasterLink:
    def __init__(
        self,
        base_url: str,
        mac: str,
        stage: Stage | str,
        *,
        timeout: float = 5.0,
        backoff: Backoff = Backoff(first=0.5),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_buffered_lines: int = 5000,
        batch_lines: int = 200,
        log: Callable[[str], None] | None = None,
        clock_keeper: ClockKeeper | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.mac = p.normalise_mac(mac)
        self.stage = Stage(stage)
        self.timeout = timeout
        self.backoff = backoff
        # heartbeats, events, logs and the host table: one kept-alive connection, one request at a time
        self.http = Connection(timeout)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_buffered_lines = max_buffered_lines
        self.batch_lines = batch_lines
        self.log = log  # told about each retry, so a node waiting for its master says so
        # the wall clock, set from the master's (a booted node) or only measured (simulated, dry run)
        self.clock_keeper = clock_keeper or ClockKeeper()
        self.registration: p.RegisterReply | None = None
        self.hardware = p.Hardware()
        self._hardware_due = False  # report_hardware: the next heartbeat carries it
        # what this boot runs, sent with every registration: the stage sets the images it knows of
        self.booted = p.Booted(kernel=os.uname().release)
        self.boot_id = boot_id()  # sent at registration: which kernel boot this is
        self.address: str | None = None  # sent at registration and with heartbeats, for the cluster's host table
        self.hosts_version = 0  # of the host table, as the last heartbeat's reply said
        self.dropped_lines = 0
        self._events: list[p.StageEvent] = []
        self._lines: list[p.LogLine] = []
        self._queue_lock = threading.Lock()  # held only to touch the buffers, never across the network
        self._http_lock = threading.Lock()  # one request at a time on self.http
        self._failures = 0
        self._next_attempt = 0.0  # clock() before which buffered items are not retried
        self.last_answer = clock()  # when the master last answered: how long it has been lost
        self._stop = threading.Event()

    # --- plumbing ----------------------------------------------------------------------------------------

    def _post(self, path: str, message: Any, reply: type[T] | None) -> T | None:
        body = p.to_json(message).encode()
        with self._http_lock:
            if path == p.REGISTER_PATH:
                response = self._post_from_reserved_port(path, body)
            else:
                token = self.registration.link_token if self.registration else ""
                response = self.http.request(
                    "POST",
                    self.base_url + path,
                    body=body,
                    headers={"Content-Type": "application/json", p.LINK_TOKEN_HEADER: token},
                    limit=p.MAX_MESSAGE_BYTES,
                )
        if response.status == p.UNKNOWN_NODE_STATUS and path != p.REGISTER_PATH:
            raise _Unregistered(response.text())
        if response.status == 403 and path == p.REGISTER_PATH:
            raise RegistrationRefused(f"master refused the registration: {_error_text(response)}")
        if response.status == 503:
            raise MasterBusy(
                f"master busy with {path}: {_error_text(response)}", busy_wait(response.header("Retry-After"))
            )
        if response.status >= 400:
            raise MasterLinkError(f"master refused {path}: HTTP {response.status}: {response.text().strip()}")
        return p.from_json(reply, response.read()) if reply else None

    def _post_from_reserved_port(self, path: str, body: bytes) -> Response:
        """POST on a connection of its own from a free port of RESERVED_PORTS, closed after the answer
        with a reset (a reserved port left in TIME_WAIT for a minute could not be bound again, and there
        are only RESERVED_PORTS of them). Where this process may not bind one (not root: a test, or a
        tool), an ordinary port is used."""
        url = self.base_url + path
        headers = {"Content-Type": "application/json", "Connection": "close"}
        for _ in range(PORT_TRIES):
            one_off = Connection(self.timeout, source_port=self.rng.choice(RESERVED_PORTS), reset_on_close=True)
            try:
                return one_off.request("POST", url, body=body, headers=headers, limit=p.MAX_MESSAGE_BYTES)
            except HttpError as exc:  # errno: a failed bind or connect, None for the exchange after it
                if exc.errno == errno.EACCES:
                    break
                if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    raise
            finally:
                one_off.close()
        return self.http.request("POST", url, body=body, headers=headers, limit=p.MAX_MESSAGE_BYTES)

    def _with_retry(self, what: str, call: Callable[[], T], attempts: int | None) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except (HttpError, RegistrationRefused, MasterBusy) as exc:
                attempt += 1
                refused = isinstance(exc, (RegistrationRefused, MasterBusy))
                problem = str(exc) if refused else f"master {self.base_url} unreachable"
                if attempts is not None and attempt >= attempts:
                    if isinstance(exc, MasterBusy):
                        raise MasterBusy(f"{what}: {problem}", exc.retry_after) from None
                    if isinstance(exc, RegistrationRefused):
                        raise RegistrationRefused(f"{what}: {problem}") from None
                    raise MasterLinkError(f"{what}: {problem} after {attempt} tries: {exc}") from None
                wait = self.backoff.delay(attempt - 1, self.rng.random)
                if isinstance(exc, MasterBusy):
                    wait = max(wait, exc.retry_after)
                if self.log is not None:
                    self.log(f"beoboot: {what}: {problem}; retry {attempt} in {wait:.1f} s")
                self.sleep(wait)

    def _note_failure(self) -> None:
        self._next_attempt = self.clock() + self.backoff.delay(self._failures, self.rng.random)
        self._failures += 1

    def _note_success(self) -> None:
        self._failures = 0
        self._next_attempt = 0.0
        self.last_answer = self.clock()

    # --- register and heartbeat --------------------------------------------------------------------------

    def register(self, hardware: p.Hardware | None = None, *, attempts: int | None = None) -> p.RegisterReply:
        """Register (or re-register) this node; retries while the master is unreachable (for ever by
        default: a node without its master has nothing else to do). Then sends anything buffered."""
        if hardware is not None:
            self.hardware = hardware
        request = p.RegisterRequest(
            self.mac, self.stage, self.hardware, __version__, self.address, self.booted, self.boot_id
        )
        sent = [0.0]

        def post() -> p.RegisterReply | None:
            sent[0] = time.monotonic()  # the last try's: the one answered
            return self._post(p.REGISTER_PATH, request, p.RegisterReply)

        reply = self._with_retry("register", post, attempts)
        received = time.monotonic()
        assert reply is not None
        self.registration = reply
        self.clock_keeper.max_drift = reply.max_clock_drift
        self.clock_keeper.observe(reply.master_time, sent[0], received, first=True)
        self._note_success()
        self.flush()
        return reply

    def heartbeat(self, uptime: float | None = None, load: p.Load | None = None) -> p.HeartbeatReply | None:
        """One heartbeat; None if the master did not answer. A master that forgot us gets a new registration."""
        keeper = self.clock_keeper
        sent_hardware = self._hardware_due
        message = p.Heartbeat(
            self.mac,
            self.stage,
            uptime,
            self.address,
            load,
            keeper.offset,
            keeper.residual,
            hardware=self.hardware if sent_hardware else None,
        )
        try:
            try:
                sent = time.monotonic()
                reply = self._post(p.HEARTBEAT_PATH, message, p.HeartbeatReply)
            except _Unregistered:
                self.register(attempts=1)
                sent = time.monotonic()
                reply = self._post(p.HEARTBEAT_PATH, message, p.HeartbeatReply)
            received = time.monotonic()
        except (HttpError, MasterLinkError, _Unregistered):
            self._note_failure()
            return None
        self._note_success()
        if reply is not None:
            self.hosts_version = reply.hosts_version
            keeper.observe(reply.master_time, sent, received)
            self._hardware_due = self._hardware_due and not sent_hardware
        return reply

    def drivers(self, hardware: p.Hardware) -> tuple[p.DriverModule, ...]:
        """The drivers for what `hardware` has unbound now; () if the master did not answer."""
        try:
            reply = self._post(p.DRIVERS_PATH, p.DriversRequest(self.mac, hardware), p.DriversReply)
        except (HttpError, MasterLinkError, _Unregistered):
            return ()
        return reply.drivers if reply is not None else ()

    def report_hardware(self, hardware: p.Hardware) -> None:
        """What the node has now (drivers loaded since it registered): sent with the next heartbeat."""
        self.hardware = hardware
        self._hardware_due = True

    def hosts(self) -> str | None:
        """The cluster's host table (HOSTS_PATH), or None when the master did not answer."""
        try:
            with self._http_lock:
                response = self.http.request("GET", self.base_url + p.HOSTS_PATH, limit=p.MAX_MESSAGE_BYTES)
        except HttpError:
            return None
        return response.text() if response.status < 400 else None

    def run_heartbeats(
        self, uptime: Callable[[], float | None] = lambda: None, load: Callable[[], p.Load | None] = lambda: None
    ) -> threading.Thread:
        """Heartbeat and flush buffers in a daemon thread every heartbeat_interval until stop()."""
        thread = threading.Thread(target=self._heartbeat_loop, args=(uptime, load), name="heartbeat", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self, uptime: Callable[[], float | None], load: Callable[[], p.Load | None]) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.beat(uptime(), load()))

    def beat(self, uptime: float | None, load: p.Load | None) -> float:
        """One heartbeat and a flush of what is buffered; the seconds until the next one is due. (A process
        that simulates many nodes calls this from a few threads, instead of a thread per node.)"""
        self.heartbeat(uptime, load)
        self.flush()
        interval = self.registration.heartbeat_interval if self.registration else 5.0
        # while the master is away, wait out the backoff rather than the interval
        return max(interval if self._failures == 0 else self._next_attempt - self.clock(), 0.05)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    # --- events and logs ---------------------------------------------------------------------------------

    def event(self, name: str | p.BootEvent, detail: str = "", *, at: float | None = None) -> None:
        """Record a stage transition (now, or at the clock() time `at` for one that happened before the
        link existed); it is sent at once if the master answers, else later."""
        item = p.StageEvent(p.check_event_name(str(name)), self.clock() if at is None else at, self.stage, detail)
        with self._queue_lock:
            self._events.append(item)
        self.flush()

    def queue_log(self, level: str, message: str, *, source: str = "agent", kernel_time: float | None = None) -> None:
        """Buffer a line for the master. A kernel record (agent.kmsg) is stamped with its own time: the kernel
        stamps records on the clock time.monotonic() reads, from the same boot (not later than now)."""
        now = self.clock()
        mono = now if kernel_time is None else min(kernel_time, now)
        line = p.LogLine(mono, self.stage, level, message, source, kernel_time)
        with self._queue_lock:
            self._lines.append(line)
            self._trim_lines()
            full = len(self._lines) >= self.batch_lines
        if full:
            self.flush()

    def _trim_lines(self) -> None:
        excess = len(self._lines) - self.max_buffered_lines
        if excess > 0:
            del self._lines[:excess]  # the oldest go: the newest lines say why the node is in trouble
            self.dropped_lines += excess

    def pending(self) -> tuple[int, int]:
        """(buffered events, buffered log lines)."""
        with self._queue_lock:
            return len(self._events), len(self._lines)

    def flush(self, *, force: bool = False) -> bool:
        """Send buffered events, then log lines. True if nothing is left. Never waits for another thread's
        request or, unless `force`, for a backoff to pass: the caller goes on, the items stay buffered."""
        if self.registration is None or (not force and self.clock() < self._next_attempt):
            return not any(self.pending())
        if not self._http_lock.acquire(blocking=force):
            return False
        self._http_lock.release()  # _post takes it per request; this only avoided queueing behind another
        try:
            while True:
                with self._queue_lock:
                    events, self._events = self._events, []
                if not events:
                    break
                try:
                    self._post(p.EVENTS_PATH, p.EventBatch(self.mac, self.clock(), tuple(events)), p.Accepted)
                except BaseException:
                    with self._queue_lock:
                        self._events[:0] = events
                    raise
            while True:
                with self._queue_lock:
                    lines, self._lines = self._lines[: self.batch_lines], self._lines[self.batch_lines :]
                    dropped, self.dropped_lines = self.dropped_lines, 0
                if not lines and not dropped:
                    break
                try:
                    self._post(p.LOGS_PATH, p.LogBatch(self.mac, self.clock(), tuple(lines), dropped), p.Accepted)
                except BaseException:
                    with self._queue_lock:
                        self._lines[:0] = lines
                        self.dropped_lines += dropped
                        self._trim_lines()
                    raise
        except _Unregistered:
            self.registration = None  # the next register() sends them
            return False
        except (HttpError, MasterLinkError):
            self._note_failure()
            return False
        self._note_success()
        return True

    def log_handler(self, level: int = logging.INFO) -> MasterLogHandler:
        return MasterLogHandler(self, level)


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    """The kernel's id of this boot (new at every boot, kexec included), or "" where it cannot be read."""
    try:
        with open(path) as f:
            return f.read(64).strip()
    except OSError:
        return ""


def _error_text(response: Response) -> str:
    """The master's JSON {"error": ...}, else its text, in one line."""
    try:
        return str(json.loads(response.read())["error"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return response.text().strip()[:500] or f"HTTP {response.status}"


class _Unregistered(Exception):
    """The master answered 404 for our MAC: it lost its registry, or we never registered."""


class MasterLogHandler(logging.Handler):
    """A logging.Handler that buffers records and ships them in batches, tagged with MAC and stage."""

    def __init__(self, link: MasterLink, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.link = link
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.queue_log(record.levelname, self.format(record))
        except Exception:  # a log call must never take the agent down
            self.handleError(record)

    def flush(self) -> None:
        self.link.flush()
