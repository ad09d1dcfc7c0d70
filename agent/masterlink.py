"""The agent's client for the master (`beoserv`): register, heartbeat, stage events, log shipping.
(Boot files come through agent.download, which checks them against their pins.)

Nodes open every connection. The master may be unreachable (not up yet, restarting, the network not
configured yet in stage 1): registration and downloads retry with exponential backoff and jitter, so a
thousand nodes that lost the master together do not come back in one synchronised wave; events and log
lines are buffered (bounded) and sent when the master answers again. Nothing here blocks for longer than
one request timeout unless the caller asked to wait (register, download).

Standard library plus `requests`; never imports beoboot.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from agent import __version__
from agent import protocol as p
from agent.download import Backoff

T = TypeVar("T")

# urllib3 logs every connection attempt; shipping those lines would post about posting, without end
QUIET_LOGGERS = ("urllib3", "requests")
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


def _retry_after(response: requests.Response) -> float:
    """Retry-After in seconds (the delay form; the date form and nonsense count as 1 s), at most 60."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
    return min(60.0, seconds) if seconds >= 0 else 1.0


class _SourcePortAdapter(HTTPAdapter):
    """Connections bound to one local port, closed with a reset: a reserved port left in TIME_WAIT for a
    minute could not be bound again, and there are only RESERVED_PORTS of them."""

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        options = [
            *HTTPConnection.default_socket_options,
            (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        ]
        super().init_poolmanager(*args, source_address=("", self.port), socket_options=options, **kwargs)


def _errno_of(exc: BaseException) -> int | None:
    """The errno of the OSError under requests' and urllib3's wrappers of a failed connect or bind."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and isinstance(item.errno, int):  # requests' own have errno None
            return item.errno
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return None


class MasterLink:
    def __init__(
        self,
        base_url: str,
        mac: str,
        stage: p.Stage | str,
        *,
        timeout: float = 5.0,
        backoff: Backoff = Backoff(first=0.5),
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_buffered_lines: int = 5000,
        batch_lines: int = 200,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.mac = p.normalise_mac(mac)
        self.stage = p.Stage(stage)
        self.timeout = timeout
        self.backoff = backoff
        self.session = session or requests.Session()
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.max_buffered_lines = max_buffered_lines
        self.batch_lines = batch_lines
        self.log = log  # told about each retry, so a node waiting for its master says so
        self.registration: p.RegisterReply | None = None
        self.hardware = p.Hardware()
        self.address: str | None = None  # sent at registration and with heartbeats, for the cluster's host table
        self.dropped_lines = 0
        self._events: list[p.StageEvent] = []
        self._lines: list[p.LogLine] = []
        self._queue_lock = threading.Lock()  # held only to touch the buffers, never across the network
        self._http_lock = threading.Lock()  # one request at a time on the session
        self._failures = 0
        self._next_attempt = 0.0  # clock() before which buffered items are not retried
        self._stop = threading.Event()

    # --- plumbing ----------------------------------------------------------------------------------------

    def _post(self, path: str, message: Any, reply: type[T] | None) -> T | None:
        with self._http_lock:
            if path == p.REGISTER_PATH:
                response = self._post_from_reserved_port(path, p.to_json(message))
            else:
                token = self.registration.link_token if self.registration else ""
                response = self.session.post(
                    self.base_url + path,
                    data=p.to_json(message),
                    timeout=self.timeout,
                    headers={"Content-Type": "application/json", p.LINK_TOKEN_HEADER: token},
                )
        if response.status_code == p.UNKNOWN_NODE_STATUS and path != p.REGISTER_PATH:
            raise _Unregistered(response.text)
        if response.status_code == 403 and path == p.REGISTER_PATH:
            raise RegistrationRefused(f"master refused the registration: {_error_text(response)}")
        if response.status_code == 503:
            raise MasterBusy(f"master busy with {path}: {_error_text(response)}", _retry_after(response))
        if response.status_code >= 400:
            raise MasterLinkError(f"master refused {path}: HTTP {response.status_code}: {response.text.strip()}")
        return p.from_json(reply, response.content) if reply else None

    def _post_from_reserved_port(self, path: str, body: str) -> requests.Response:
        """POST on a connection of its own from a free port of RESERVED_PORTS, closed after the answer.
        Where this process may not bind one (not root: a test, or a tool), an ordinary port is used."""
        headers = {"Content-Type": "application/json", "Connection": "close"}
        for _ in range(PORT_TRIES):
            with requests.Session() as one_off:
                adapter = _SourcePortAdapter(self.rng.choice(RESERVED_PORTS))
                one_off.mount("http://", adapter)
                one_off.mount("https://", adapter)
                try:
                    return one_off.post(self.base_url + path, data=body, timeout=self.timeout, headers=headers)
                except requests.ConnectionError as exc:
                    code = _errno_of(exc)
                    if code == errno.EACCES:
                        break
                    if code not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                        raise
        return self.session.post(self.base_url + path, data=body, timeout=self.timeout, headers=headers)

    def _with_retry(self, what: str, call: Callable[[], T], attempts: int | None) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except (requests.RequestException, RegistrationRefused, MasterBusy) as exc:
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

    # --- register and heartbeat --------------------------------------------------------------------------

    def register(self, hardware: p.Hardware | None = None, *, attempts: int | None = None) -> p.RegisterReply:
        """Register (or re-register) this node; retries while the master is unreachable (for ever by
        default: a node without its master has nothing else to do). Then sends anything buffered."""
        if hardware is not None:
            self.hardware = hardware
        request = p.RegisterRequest(self.mac, self.stage, self.hardware, __version__, self.address)
        reply = self._with_retry("register", lambda: self._post(p.REGISTER_PATH, request, p.RegisterReply), attempts)
        assert reply is not None
        self.registration = reply
        self._note_success()
        self.flush()
        return reply

    def heartbeat(self, uptime: float | None = None, load: p.Load | None = None) -> p.HeartbeatReply | None:
        """One heartbeat; None if the master did not answer. A master that forgot us gets a new registration."""
        message = p.Heartbeat(self.mac, self.stage, uptime, self.address, load)
        try:
            try:
                reply = self._post(p.HEARTBEAT_PATH, message, p.HeartbeatReply)
            except _Unregistered:
                self.register(attempts=1)
                reply = self._post(p.HEARTBEAT_PATH, message, p.HeartbeatReply)
        except (requests.RequestException, MasterLinkError, _Unregistered):
            self._note_failure()
            return None
        self._note_success()
        return reply

    def hosts(self) -> str | None:
        """The cluster's host table (HOSTS_PATH), or None when the master did not answer."""
        try:
            with self._http_lock:
                response = self.session.get(self.base_url + p.HOSTS_PATH, timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException:
            return None
        return response.text

    def run_heartbeats(
        self, uptime: Callable[[], float | None] = lambda: None, load: Callable[[], p.Load | None] = lambda: None
    ) -> threading.Thread:
        """Heartbeat and flush buffers in a daemon thread every heartbeat_interval until stop()."""
        thread = threading.Thread(target=self._heartbeat_loop, args=(uptime, load), name="heartbeat", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self, uptime: Callable[[], float | None], load: Callable[[], p.Load | None]) -> None:
        while not self._stop.is_set():
            self.heartbeat(uptime(), load())
            self.flush()
            interval = self.registration.heartbeat_interval if self.registration else 5.0
            # while the master is away, wait out the backoff rather than the interval
            wait = max(interval if self._failures == 0 else self._next_attempt - self.clock(), 0.05)
            self._stop.wait(wait)

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

    def queue_log(self, level: str, message: str) -> None:
        line = p.LogLine(self.clock(), self.stage, level, message)
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
        except (requests.RequestException, MasterLinkError):
            self._note_failure()
            return False
        self._note_success()
        return True

    def log_handler(self, level: int = logging.INFO) -> MasterLogHandler:
        return MasterLogHandler(self, level)


def _error_text(response: requests.Response) -> str:
    """The master's JSON {"error": ...}, else its text, in one line."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:500] or f"HTTP {response.status_code}"


class _Unregistered(Exception):
    """The master answered 404 for our MAC: it lost its registry, or we never registered."""


class MasterLogHandler(logging.Handler):
    """A logging.Handler that buffers records and ships them in batches, tagged with MAC and stage."""

    def __init__(self, link: MasterLink, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.link = link
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(QUIET_LOGGERS) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.queue_log(record.levelname, self.format(record))
        except Exception:  # a log call must never take the agent down
            self.handleError(record)

    def flush(self) -> None:
        self.link.flush()
