"""`beoserv`: one continuously running aiohttp server for every node of the cluster.

It serves the boot tree (the builder's output directory) with Range and If-Range so nodes resume broken
downloads, registers nodes, takes heartbeats, events and log lines (agent.protocol is the contract), and
marks silent nodes down. SIGHUP re-reads the config; SIGUSR1 writes the server's state to the log.

One process for a thousand nodes (Becker: "forking a thousand makes 1 seem like a much better idea"), so
it must not leak: files are opened per request and closed once sent (beoboot.master.filesend),
connections are aiohttp's, and the registry keeps two SQLite connections, one of them its writer thread's.
What it holds at once is bounded: descriptors by the open-files limit checked at start (fdlimit), big
transfers by max_transfers (transfers), request bodies by BODY_BUDGET.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import protocol as p
from agent.schema import Stage
from beoboot.errors import BeobootError, ConfigError
from beoboot.image.manifest import MANIFEST_NAME
from beoboot.master import admission, exhaustion, fdlimit, hostsfile, nextboot, transfers
from beoboot.master.bpsh.localjobs import LocalListener
from beoboot.master.config import MasterConfig, load_config
from beoboot.master.hosttable import HostTable
from beoboot.master.hwdrivers import DriverPlanner
from beoboot.master.jobhub import JobHub
from beoboot.master.listener import BACKLOG, listen
from beoboot.master.mountreports import MountReports
from beoboot.master.nextboot import PublishedBoot
from beoboot.master.nodehooks import NodeHooks
from beoboot.master.printable import printable
from beoboot.master.published import NotPublished, PublishedTree
from beoboot.master.rates import SAMPLE_EVERY, WINDOW, Rates
from beoboot.master.registry import NodeRecord, Registry, RegistryError
from beoboot.master.selection import SelectionError

log = logging.getLogger("beoserv")
node_log = logging.getLogger("beoserv.node")

NAME_MAX = 255  # bytes in one name of a path (Linux): a longer one names nothing here
CONTROL = re.compile("[\x00-\x1f\x7f]")
BOOT_NUMBER = re.compile("[0-9]{1,18}")  # within SQLite's 64-bit INTEGER
NODE_LOG_LIMIT = 10000  # lines of a node's log in one answer (bpstat --log)
# The host table is published to the nodes, and the hosts file rewritten (and synced to disk), at most this
# often: when a thousand nodes register at once the table is joined, and nodes told of it, a few times, not a
# thousand (beoboot.master.hosttable)
HOSTS_DELAY = 0.5
BODY_BUDGET = 64 << 20  # bytes of request bodies in memory at once (BodyBudget)
# config keys read once, when beoserv starts: its open-files limit was checked against them
STARTUP_KEYS = ("max_nodes", "max_transfers")

MASTER_HOSTNAME = socket.gethostname()  # told to every node (RegisterReply.master_hostname)


@dataclass(frozen=True)
class ServerOptions:
    root: Path
    host: str
    port: int
    db: Path
    config_path: Path | None = None
    bpsh_socket: Path | None = None  # where bpsh connects (beoboot.master.bpsh.localjobs); None: no bpsh


def parse_listen(text: str) -> tuple[str, int]:
    """'0.0.0.0:8080' -> ('0.0.0.0', 8080); port 0 picks a free port (printed when listening)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise BeobootError(f"--listen {text!r} is not HOST:PORT", hint="e.g. --listen 0.0.0.0:8080")
    return host.strip("[]"), int(port)


def process_figures() -> tuple[int, int]:
    """(open file descriptors, resident set size in KiB) of this process, from /proc."""
    fds = len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself holds open
    rss = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, rss


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def master_time(now: float, sent_mono: float, mono: float) -> float:
    """When something happened on the node, in master time (see agent.protocol): never in the future."""
    return now - max(0.0, sent_mono - mono)


def resolve_boot_path(tree: PublishedTree, relative: str) -> Path:
    """The real path of a file of the published build, or 404 "not published": beoserv serves the build's
    manifest.json and what it lists, nothing else under the tree (beoboot.master.published)."""
    try:
        return tree.file(relative)
    except NotPublished:
        raise web.HTTPNotFound(text=f"not published: {relative}\n") from None


def _plain_ipv4(text: str | None) -> str | None:
    """A node's reported address ("10.0.2.15/24" or "10.0.2.15") as a plain IPv4 address; anything else is
    not put in the host table (it goes into every node's /etc/hosts)."""
    try:
        return str(ipaddress.IPv4Interface(text).ip) if text else None
    except ValueError:
        return None


def json_response(message: Any, status: int = 200) -> web.Response:
    return web.Response(text=p.to_json(message), status=status, content_type="application/json")


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    return web.Response(text=json.dumps({"error": message, **extra}), status=status, content_type="application/json")


class RequestRefused(Exception):
    """A request answered with `status` and a JSON error before (or instead of) its handler."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BodyBudget:
    """Request bodies are held in memory until their handler is done; these are the bytes all of them may
    take at once (by their Content-Length, or the largest allowed when a body is chunked). Past it a request
    is told to come back (503, Retry-After), so clients that send large bodies slowly cannot make beoserv
    grow without bound; a node's messages are a few KiB, so thousands fit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.refusals = exhaustion.Tally(60.0)

    def take(self, size: int) -> bool:
        if self.taken + size > self.limit:
            return False
        self.taken += size
        return True

    def give_back(self, size: int) -> None:
        self.taken -= size


def refused_response(exc: RequestRefused) -> web.Response:
    response = error_response(exc.status, str(exc))
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if exc.status in (408, 413, 503):
        # the rest of the body is not waited for; a client told to come back frees its descriptor meanwhile
        response.force_close()
    return response


def check_path(path: str) -> None:
    """A control character in a path is bad input (400): no file, node or route has one, and a NUL stops
    the file system's calls. A name longer than a file name can be names nothing (404)."""
    if CONTROL.search(path):
        raise RequestRefused(400, f"the path '{printable(path)}' has a control character")
    if any(len(name.encode("utf-8", "surrogateescape")) > NAME_MAX for name in path.split("/")):
        raise RequestRefused(404, f"no such path: a name in it is longer than {NAME_MAX} bytes")


class OneLineLog(logging.LoggerAdapter):
    """aiohttp's own complaints (a request it cannot parse, a client gone) as one line of beoserv's log,
    with the traceback only at debug level: a hostile client must not fill the log with tracebacks."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.error(msg, *args, exc_info=exc_info, **kwargs)
            return
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        said = " ".join(f"{type(exc).__name__}: {exc}".split()) if exc else ""
        self.logger.warning("%s: %s", printable(str(msg) % args if args else msg), printable(said))


class Beoserv:
    def __init__(self, options: ServerOptions, config: MasterConfig) -> None:
        self.options = options
        self.config = config
        self.registry = Registry(options.db)
        self.published = PublishedTree(options.root)
        self.bodies = BodyBudget(BODY_BUDGET)
        self.exhausted = exhaustion.Tally()  # requests refused for want of descriptors or memory
        self.transfer_refusals = exhaustion.Tally()  # requests refused for want of a transfer slot
        self.transfers = transfers.TransferGate(config.max_transfers, config.max_nodes)
        self.open_files_limit: int | None = None  # what serve() raised it to (None: not known, in a test)
        self.jobs = JobHub(
            self.registry,
            self.transfers,
            link_wait=self.config.job_link_wait,
            reattach_wait=self.config.job_reattach_wait,
        )
        self.jobs.config = config
        self._hosts = HostTable({})
        self._hosts_due: asyncio.TimerHandle | None = None
        self.started = time.time()
        self.rates = Rates()  # requests and bytes answered
        self.config_loads = 1
        self._reaper: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.refusals = admission.RefusalLog()
        self.hooks = NodeHooks(lambda: self.config)  # on_node_up, on_node_down
        self.jobs.node_down = self.hooks.node_down  # bpctl's power orders take nodes down there
        self.mount_reports = MountReports()
        self._drivers: DriverPlanner | None = None

    # --- application -------------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(p.REGISTER_PATH, self.register)
        app.router.add_post(p.HEARTBEAT_PATH, self.heartbeat)
        app.router.add_post(p.EVENTS_PATH, self.events)
        app.router.add_post(p.LOGS_PATH, self.logs)
        app.router.add_post(p.DRIVERS_PATH, self.drivers)
        app.router.add_get(p.NODES_PATH, self.nodes)
        app.router.add_get(p.HOSTS_PATH, self.hosts)
        app.router.add_get(p.TIMELINE_PATH, self.timeline)
        app.router.add_get(p.NODE_LOG_PATH, self.node_log)
        app.router.add_get(p.STATUS_PATH, self.status)
        self.jobs.add_routes(app)  # before the boot tree's catch-all
        app.router.add_get(p.BOOT_PREFIX + "{path:.+}", self.boot_file)
        app.on_response_prepare.append(self._answering)
        app.on_startup.append(self._start_up)
        app.on_cleanup.append(self._stop)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.rates.requests += 1
        try:
            check_path(request.path)
            if not request.body_exists:
                return await handler(request)
            size = min(request.content_length or request.client_max_size, request.client_max_size)
            if not self.bodies.take(size):
                self._bodies_refused(request)
            try:
                await self._read_body(request)
                return await handler(request)
            finally:
                self.bodies.give_back(size)
        except p.ProtocolError as exc:
            log.warning("bad message from %s to %s: %s", request.remote, printable(request.path), printable(exc))
            return error_response(400, str(exc))
        except RegistryError as exc:
            return error_response(404, str(exc))
        except RequestRefused as exc:
            return refused_response(exc)
        except transfers.Busy as exc:
            self._transfer_refused(request)
            return refused_response(RequestRefused(503, str(exc), exc.retry_after))
        except web.HTTPException:
            raise
        except ConnectionError as exc:
            log.info(
                "%s %s from %s: the client went away (%s)",
                request.method,
                printable(request.path),
                request.remote,
                printable(exc),
            )
            return error_response(400, "the connection broke")  # to no one: aiohttp drops it
        except Exception as exc:
            if isinstance(exc, OSError) and exhaustion.exhausted(exc):
                # EMFILE from an open(), wherever it was: the same request works later
                return refused_response(self._exhausted(request, exc))
            # a last resort: each cause found is fixed where it arises; this keeps the next one to one line
            log.error(
                "%s %s from %s failed: %s: %s",
                request.method,
                printable(request.path_qs),
                request.remote,
                type(exc).__name__,
                printable(exc),
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return error_response(500, f"beoserv failed on this request ({type(exc).__name__}); its log says more")

    def _bodies_refused(self, request: web.Request) -> None:
        if (counted := self.bodies.refusals.count()) is not None:
            log.warning(
                "request bodies in memory reached %d MiB: %d request(s) told to retry (latest %s %s from %s)",
                self.bodies.limit >> 20,
                counted,
                request.method,
                printable(request.path),
                request.remote,
            )
        raise RequestRefused(
            503,
            f"beoserv holds {self.bodies.limit >> 20} MiB of request bodies: retry shortly",
            retry_after=exhaustion.retry_after(),
        )

    def _transfer_refused(self, request: web.Request) -> None:
        if (counted := self.transfer_refusals.count()) is not None:
            log.warning(
                "transfers: %d under way, %d waiting: %d request(s) told to retry since the last line "
                "(latest %s from %s)",
                self.transfers.active,
                self.transfers.waiting,
                counted,
                printable(request.path),
                request.remote,
            )

    def _exhausted(self, request: web.Request, exc: OSError) -> RequestRefused:
        """A request that met EMFILE (or ENFILE, ENOMEM, ENOBUFS): told to retry, and counted in one log line
        per interval."""
        if (counted := self.exhausted.count()) is not None:
            log.warning(
                "%s: %d request(s) told to retry since the last line (latest %s %s from %s)",
                exc.strerror or exc,
                counted,
                request.method,
                printable(request.path),
                request.remote,
            )
        return RequestRefused(
            503, f"beoserv is short of a resource ({exc.strerror or exc}): retry shortly", exhaustion.retry_after()
        )

    async def _read_body(self, request: web.Request) -> None:
        """The whole body, before the handler (which then reads it from memory): a client that sends it
        slower than request_timeout allows is answered 408 and cut off, not waited for for ever."""
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await request.read()
        except TimeoutError:
            raise RequestRefused(
                408, f"the request's body did not arrive within {self.config.request_timeout:g}s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise RequestRefused(413, f"the request's body is larger than {request.client_max_size} bytes") from None

    async def _answering(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer, just before its head is sent: its bytes counted (a file's, as it will be sent)."""
        self.rates.answered(response.content_length or 0)

    async def _start_up(self, app: web.Application) -> None:
        self._build_host_table()  # the nodes the registry knows are named in config.hosts_file from the start
        self._reaper = asyncio.create_task(self._reap_forever())
        self._sampler = asyncio.create_task(self._sample_forever())

    async def _stop(self, app: web.Application) -> None:
        for task in (self._reaper, self._sampler):
            if task:
                task.cancel()
        if self._hosts_due is not None:
            self._publish_hosts()  # the last registrations' names are not left out of the file
        await self.hooks.close()
        self.registry.close()

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self.rates.sample()
            self.transfers.crowded = self._crowded()

    def _crowded(self) -> bool:
        """Whether the descriptors left below the open-files limit would not hold every transfer slot."""
        if self.open_files_limit is None:
            return False
        try:
            fds, _ = process_figures()
        except OSError:  # EMFILE for the listing itself
            return True
        return fds > self.open_files_limit - fdlimit.needed(0, self.config.max_transfers)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.effective_reap_interval)
            self.reap()

    def reap(self) -> None:
        now = time.time()
        for node in self.registry.mark_silent_down(now - self.config.heartbeat_timeout, now):
            log.warning(
                "node %d (%s) down: no heartbeat for %.1fs", node.number, node.mac, self.config.heartbeat_timeout
            )
            self.hooks.node_down(node.number)

    # --- signals -----------------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: a bad config file is reported and the running config kept, so a typo never stops the master."""
        try:
            config = load_config(self.options.config_path)
        except ConfigError as exc:
            log.error("config not reloaded, keeping the running one: %s", exc)
            return
        for key in STARTUP_KEYS:
            if getattr(config, key) != getattr(self.config, key):
                log.warning(
                    "config reloaded: %s = %s takes effect when beoserv restarts; %s until then",
                    key,
                    getattr(config, key),
                    getattr(self.config, key),
                )
        config = dataclasses.replace(config, **{key: getattr(self.config, key) for key in STARTUP_KEYS})
        self.config = self.jobs.config = config
        self.config_loads += 1
        self.jobs.link_wait, self.jobs.reattach_wait = config.job_link_wait, config.job_reattach_wait
        log.info("config reloaded from %s: %s", self.options.config_path, config)
        self._build_host_table()  # a new address plan or hosts_file takes effect now, not at the next heartbeat

    def server_status(self) -> p.ServerStatus:
        fds, rss = process_figures()
        counts = self.registry.state_counts()
        requests_per_s, bytes_per_s = self.rates.per_second()
        return p.ServerStatus(
            pid=os.getpid(),
            uptime=time.time() - self.started,
            nodes=sum(counts.values()),
            states=counts,
            open_fds=fds,
            rss_kib=rss,
            requests=self.rates.requests,
            config_loads=self.config_loads,
            transfers_active=self.transfers.active,
            transfers_waiting=self.transfers.waiting,
            transfers_refused=self.transfers.refused,
            requests_per_s=round(requests_per_s, 1),
            bytes_per_s=round(bytes_per_s),
            log_lines_dropped=self.registry.dropped_lines,
        )

    def dump_state(self) -> None:
        """SIGUSR1: the server's figures, then one line per node."""
        s = self.server_status()
        states = " ".join(f"{k}={v}" for k, v in s.states.items())
        log.info(
            "state: pid=%d uptime=%.0fs nodes=%d (%s) open_fds=%d rss_kib=%d requests=%d config_loads=%d",
            s.pid,
            s.uptime,
            s.nodes,
            states,
            s.open_fds,
            s.rss_kib,
            s.requests,
            s.config_loads,
        )
        log.info(
            "state: last %.0fs: %.1f requests/s, %.1f MiB/s sent; transfers: %d under way (max %d), %d waiting, "
            "%d told to retry since start; log lines dropped: %d",
            WINDOW,
            s.requests_per_s,
            s.bytes_per_s / (1 << 20),
            s.transfers_active,
            self.transfers.limit,
            s.transfers_waiting,
            s.transfers_refused,
            s.log_lines_dropped,
        )
        now = time.time()
        for node in self.registry.nodes():
            log.info(
                "state: node %d %s %s %s boot=%d last_seen=%.1fs ago",
                node.number,
                node.mac,
                node.state,
                node.stage,
                node.boot,
                now - node.last_seen,
            )

    # --- node API ----------------------------------------------------------------------------------------

    def _row(self, node: NodeRecord, now: float, published: PublishedBoot | None = None) -> p.NodeRow:
        return p.NodeRow(
            number=node.number,
            mac=node.mac,
            name=p.node_name(node.number),
            hostname=p.node_hostname(node.number, self.config.hostname_prefix),
            address=self._address_of(node),
            state=node.state,
            stage=node.stage,
            boot=node.boot,
            last_seen=node.last_seen,
            uptime=node.uptime_now(now),
            hardware=node.hardware,
            load=node.load if node.state is not p.NodeState.DOWN else None,
            agent_version=node.agent_version,
            booted=node.booted,
            next_boot_changes=nextboot.changes(node.booted, published),
            clock_offset=node.clock_offset,
            clock_residual=node.clock_residual,
            mount_failures=self.mount_reports.failures(node.number, node.boot),
        )

    def _registration_refused(self, request: web.Request) -> web.Response | None:
        """A 403 naming why, unless the machine at the other end may register a node (beoboot.master.admission)."""
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        ours = transport.get_extra_info("sockname") if transport else None
        try:
            if not (isinstance(peer, tuple) and isinstance(ours, tuple)):
                raise admission.RegistrationRefused(f"registration from {peer!r}: not a TCP connection")
            admission.check(peer[:2], ours[:2], self.config)
        except admission.RegistrationRefused as exc:
            self.refusals.refused(str(peer[0] if isinstance(peer, tuple) else peer), str(exc))
            return error_response(403, str(exc))
        return None

    async def register(self, request: web.Request) -> web.Response:
        if (refused := self._registration_refused(request)) is not None:
            return refused
        msg = p.from_json(p.RegisterRequest, await request.read())
        address = _plain_ipv4(msg.address)
        booted = p.check_booted(msg.booted, "RegisterRequest.booted")
        # shown in bpstat: a version is the kind of word a release is ("0.1.0"); anything else is dropped
        # rather than refused, as a node must not fail to register over how it names its agent
        agent_version = msg.agent_version if p.KERNEL_RELEASE.fullmatch(msg.agent_version) else ""
        node = self.registry.register(
            msg.mac, msg.stage, msg.hardware, time.time(), self.config.keep_boots, address, agent_version, booted
        )
        await self.registry.committed()  # a number handed out is never handed out again, even after a crash
        log.info(
            "node %d (%s) registered at %s, boot %d, from %s",
            node.number,
            node.mac,
            msg.stage,
            node.boot,
            request.remote,
        )
        await self.jobs.drop_link(node.number, f"node {node.number} registered again from {request.remote}")
        self.hooks.registered(node.number, printable(msg.boot_id)[:64], node.boot)
        self._host_changed(node)
        # stage 3 loads them; stages 1 and 2 carry their own NIC drivers and move on
        drivers = (
            await self._drivers_for(node.number, msg.hardware, booted.kernel) if msg.stage == Stage.SUPERVISOR else ()
        )
        self.jobs.grant(
            node.number, node.link_token, frozenset(f.sha256 for d in drivers for f in (d.module, *d.firmware))
        )
        return json_response(
            p.RegisterReply(
                number=node.number,
                name=p.node_name(node.number),
                hostname=p.node_hostname(node.number, self.config.hostname_prefix),
                address=self.config.node_address(node.number),
                boot=node.boot,
                heartbeat_interval=self.config.heartbeat_interval,
                heartbeat_timeout=self.config.heartbeat_timeout,
                link_token=node.link_token,
                master_hostname=MASTER_HOSTNAME,
                drivers=drivers,
                mounts=tuple(mount.for_node() for mount in self.config.mounts),
                dns_servers=self.config.dns_servers,
                dns_search=self.config.dns_search,
                master_time=time.time(),  # as late as can be: the node takes it for now + half the round trip
                max_clock_drift=self.config.max_clock_drift,
            )
        )

    async def drivers(self, request: web.Request) -> web.Response:
        """Drivers for the devices that appeared once the first ones were loaded (a SATA disk behind ahci)."""
        msg = p.from_json(p.DriversRequest, await request.read())
        if (refused := self._not_from(request, msg.mac)) is not None:
            return refused
        node = self.registry.node_by_mac(msg.mac)
        if node is None:
            return self._unknown(msg.mac)
        drivers = await self._drivers_for(node.number, msg.hardware, node.booted.kernel)
        self.jobs.grant(
            node.number, node.link_token, frozenset(f.sha256 for d in drivers for f in (d.module, *d.firmware))
        )
        return json_response(p.DriversReply(drivers))

    async def _drivers_for(self, number: int, hardware: p.Hardware, kernel: str) -> tuple[p.DriverModule, ...]:
        """The modules for the node's devices that no driver bound (beoboot.master.hwdrivers)."""
        if not self.config.drivers_sysroot or not hardware.unbound():
            return ()
        try:
            if self._drivers is None or self._drivers.sysroot.root != Path(self.config.drivers_sysroot).resolve():
                self._drivers = DriverPlanner(self.config.drivers_sysroot, self.jobs.objects)
            drivers = await asyncio.to_thread(self._drivers.plan, hardware, kernel)
        except (OSError, BeobootError) as exc:
            log.warning("node %d: no drivers sent for its hardware: %s", number, exc)
            return ()
        if drivers:
            log.info("node %d: sending drivers %s", number, " ".join(d.name for d in drivers))
        return drivers

    def _unknown(self, mac: str) -> web.Response:
        return error_response(p.UNKNOWN_NODE_STATUS, f"node {printable(mac)} is not registered", register=True)

    def _not_from(self, request: web.Request, mac: str) -> web.Response | None:
        """A node's heartbeats, events and log lines count only with the token of its latest registration,
        so no one else (a user on the master or on a node) can keep a node up, move it or write its log.
        Without it the answer is the unknown node's: the node itself registers again and gets one."""
        token = self.registry.link_token(mac)
        sent = request.headers.get(p.LINK_TOKEN_HEADER, "")
        if token and hmac.compare_digest(token.encode(), sent.encode("utf-8", "replace")):
            return None
        return error_response(
            p.UNKNOWN_NODE_STATUS, f"node {printable(mac)} is not registered, or not with the token sent", register=True
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        msg = p.from_json(p.Heartbeat, await request.read())
        if (refused := self._not_from(request, msg.mac)) is not None:
            return refused
        generation = self.registry.generation
        clock = (msg.clock_offset, msg.clock_residual)
        node = self.registry.heartbeat(
            msg.mac, msg.stage, msg.uptime, time.time(), _plain_ipv4(msg.address), msg.load, clock, msg.hardware
        )
        if node is None:
            return self._unknown(msg.mac)
        if self.registry.generation != generation:
            log.info("node %d (%s) now at %s: its DHCP lease moved it", node.number, node.mac, node.address)
            self._host_changed(node)
        version = self._hosts.published.version
        return json_response(
            p.HeartbeatReply(node.number, node.state, self.config.heartbeat_interval, version, time.time())
        )

    def _address_of(self, node: NodeRecord) -> str | None:
        """Where the node is reached: its address plan's address, else the one it last reported."""
        return self.config.node_address(node.number) or node.address

    def _host_line(self, number: int, reported: str | None) -> str | None:
        address = self.config.node_address(number) or reported
        if not address:
            return None
        return f"{address} {p.node_hostname(number, self.config.hostname_prefix)} {p.node_name(number)}\n"

    def _build_host_table(self) -> None:
        """The host table from the whole registry, published and into config.hosts_file at once: at start,
        and on a config reload (a new address plan or prefix renames every node)."""
        lines = ((number, self._host_line(number, address)) for number, address in self.registry.addresses())
        self._hosts = HostTable({number: line for number, line in lines if line})
        self._publish_hosts()

    def _host_changed(self, node: NodeRecord) -> None:
        """One node registered or moved: its line alone changes, published with the others' shortly after."""
        if self._hosts.put(node.number, self._host_line(node.number, node.address)) and self._hosts_due is None:
            self._hosts_due = asyncio.get_running_loop().call_later(HOSTS_DELAY, self._publish_hosts)

    def _publish_hosts(self) -> None:
        """The batch of changes to the nodes (heartbeat replies carry the new version) and the hosts file."""
        if self._hosts_due is not None:
            self._hosts_due.cancel()
            self._hosts_due = None
        table = self._hosts.publish().text
        path = self.config.hosts_file
        if not path:
            return
        try:
            if hostsfile.update(path, table):
                log.info("hosts file %s: the nodes' block now names %d nodes", path, len(table.splitlines()))
        except hostsfile.HostsFileError as exc:
            log.error("hosts file %s: %s; the master does not resolve node names until this is fixed", path, exc)

    async def hosts(self, request: web.Request) -> web.Response:
        """The published table; 304 to a node that has it (If-None-Match: its ETag)."""
        table = self._hosts.published
        headers = {"ETag": table.etag, "X-Beoboot-Hosts-Version": str(table.version)}
        if table.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=table.body, content_type="text/plain", charset="utf-8", headers=headers)

    async def events(self, request: web.Request) -> web.Response:
        msg = p.from_json(p.EventBatch, await request.read())
        if (refused := self._not_from(request, msg.mac)) is not None:
            return refused
        for event in msg.events:
            p.check_event_name(event.name)
        now = time.time()
        timed = [(master_time(now, msg.sent_mono, e.mono), e) for e in msg.events]
        before = self.registry.node_by_mac(msg.mac)
        number = self.registry.record_events(msg.mac, timed, now)
        if number is None or before is None:
            return self._unknown(msg.mac)
        for _, e in timed:
            if e.name == p.MOUNT_FAILED:
                self.mount_reports.failed(number, before.boot, printable(e.detail))
        if not before.ready and any(e.name == p.BootEvent.STAGE3_READY for _, e in timed):
            self.hooks.node_up(number)
        for _, e in timed:
            log.info("node %d (%s) %s %s %s", number, printable(msg.mac), e.stage, e.name, printable(e.detail))
        return json_response(p.Accepted(len(timed)))

    async def logs(self, request: web.Request) -> web.Response:
        msg = p.from_json(p.LogBatch, await request.read())
        if (refused := self._not_from(request, msg.mac)) is not None:
            return refused
        for line in msg.lines:
            if line.source not in p.LOG_SOURCES:
                raise p.ProtocolError(
                    f"LogBatch.lines: source {printable(line.source)[:40]!r} is not one of {p.LOG_SOURCES}"
                )
        now = time.time()
        timed = [(master_time(now, msg.sent_mono, line.mono), line) for line in msg.lines]
        number = self.registry.record_logs(msg.mac, timed, now)
        if number is None:
            return self._unknown(msg.mac)
        mac = printable(msg.mac)
        for t, line in timed:
            stage = f"{line.stage} kernel" if line.source == "kernel" else line.stage
            node_log.info("%s %s %s %s %s", iso(t), mac, stage, printable(line.level), printable(line.message))
        if msg.dropped:
            node_log.warning("%s %s node dropped %d log lines (buffer full)", iso(now), mac, msg.dropped)
        return json_response(p.Accepted(len(timed)))

    async def nodes(self, request: web.Request) -> web.Response:
        """Every node, or those of the node set `nodes` less `exclude` (bpstat NODESET -x NODESET)."""
        now = time.time()
        records = self.registry.nodes()
        if "nodes" in request.query or "exclude" in request.query:
            nodes, exclude = request.query.get("nodes") or "@all", request.query.get("exclude", "")
            try:
                chosen = set(self.jobs.select(nodes, exclude, linked=False))
            except SelectionError as exc:
                return error_response(400, str(exc))
            records = [node for node in records if node.number in chosen]
        published = self.published.boot()
        return json_response(p.NodeList(now, tuple(self._row(n, now, published) for n in records)))

    async def timeline(self, request: web.Request) -> web.Response:
        node = self.registry.find(request.match_info["node"])
        boot_arg = request.query.get("boot")
        if boot_arg is not None and not BOOT_NUMBER.fullmatch(boot_arg):
            raise p.ProtocolError(f"boot='{printable(boot_arg)[:40]}' must be a boot number (at most 18 digits)")
        await self.registry.committed()  # the events sent so far are in the database
        boot, entries = self.registry.timeline(node.number, int(boot_arg) if boot_arg else None)
        rows = tuple(p.TimelineEntry(e.t, e.event, e.stage, e.detail) for e in entries)
        return json_response(p.Timeline(node.number, node.mac, boot, rows))

    async def node_log(self, request: web.Request) -> web.Response:
        """A node's log lines (bpstat --log), oldest first: every source, or the one `source` names."""
        node = self.registry.find(request.match_info["node"])
        source = request.query.get("source")
        if source is not None and source not in p.LOG_SOURCES:
            raise p.ProtocolError(f"source='{printable(source)[:40]}' must be one of {', '.join(p.LOG_SOURCES)}")
        limit_arg = request.query.get("limit", str(NODE_LOG_LIMIT))
        if not BOOT_NUMBER.fullmatch(limit_arg) or not 0 < int(limit_arg) <= NODE_LOG_LIMIT:
            raise p.ProtocolError(
                f"limit='{printable(limit_arg)[:40]}' must be a number of lines, 1 to {NODE_LOG_LIMIT}"
            )
        await self.registry.committed()  # the lines sent so far are in the database
        rows = self.registry.log_entries(node.number, int(limit_arg), source)
        entries = tuple(
            p.NodeLogEntry(t, Stage(stage), level, message, src, kt) for t, stage, level, message, src, kt in rows
        )
        return json_response(p.NodeLog(node.number, entries))

    async def status(self, request: web.Request) -> web.Response:
        return json_response(self.server_status())

    # --- boot tree ---------------------------------------------------------------------------------------

    async def boot_file(self, request: web.Request) -> web.StreamResponse:
        """A file of the published build (beoboot.master.filesend), a big one after a transfer slot. `path`
        is in the published build's own directory, which a later build never changes, and the file is sent
        from the descriptor opened now, so it is this build's even if another is published meanwhile."""
        relative = request.match_info["path"]
        path = resolve_boot_path(self.published, relative)
        # the manifest takes no slot: every node reads it before it asks for anything else (stage 1 before it
        # is a node), and it is a few hundred KiB beside the images it names
        gated = path.name != MANIFEST_NAME or path.parent != self.published.build_dir()
        try:
            return await transfers.send_file(self.transfers, self._transfer_node(request), path, request, gated=gated)
        except OSError as exc:
            if exhaustion.exhausted(exc):
                raise
            raise web.HTTPNotFound(text=f"not published: {relative}\n") from None  # removed since resolved

    def _transfer_node(self, request: web.Request) -> str:
        """Which node a boot file goes to, for the transfer gate's round robin: the node its `mac` query
        names (agent.bootfiles: stages 2 and 3 have registered), else the address it asks from (stage 1 fetches
        before it is anyone)."""
        mac = request.query.get("mac", "")
        try:
            node = self.registry.node_by_mac(mac) if mac else None
        except p.ProtocolError:
            node = None
        return transfers.node_key(node.number) if node is not None else f"peer {request.remote}"


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s beoserv: %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    # node lines carry their own time, MAC and stage
    node_handler = logging.StreamHandler()
    node_handler.setFormatter(logging.Formatter("node: %(message)s"))
    node_log.handlers[:] = [node_handler]
    node_log.setLevel(level)
    node_log.propagate = False


def raise_open_files_limit(config: MasterConfig) -> int:
    """Before anything is opened: the limit that holds max_nodes and max_transfers (returned), or
    BeobootError."""
    before, limit, need = fdlimit.ensure(config.max_nodes, config.max_transfers)
    log.info(
        "open files: limit %d (soft was %d), %d needed for max_nodes = %d and max_transfers = %d",
        limit,
        before,
        need,
        config.max_nodes,
        config.max_transfers,
    )
    return limit


REOPEN_ATTEMPTS = 20  # SIGHUP: binds of the HTTP port again, backing off up to 5 s


class Listening:
    """beoserv's listening sockets, which SIGHUP opens again (a socket file removed by a cleanup of /run, a
    listener in a bad state) without closing any connection made through them: node links, downloads and
    bpsh sessions go on. The bpsh socket is replaced by a rename, with no moment without one; the HTTP port
    is closed, then bound again at once (a node that connects in between is refused and retries)."""

    def __init__(self, runner: web.AppRunner, site: web.SockSite, local: LocalListener | None, host: str) -> None:
        self.runner, self.site, self.local, self.host = runner, site, local, host

    async def reopen(self) -> None:
        if self.local is not None:
            try:
                self.local.reopen()
            except BeobootError as exc:
                log.error("bpsh socket not reopened, keeping the open one: %s", exc)
        port = self.runner.addresses[0][1]
        await self.site.stop()  # the listening socket only: asyncio leaves the connections open
        for attempt in range(REOPEN_ATTEMPTS):
            try:
                site = web.SockSite(self.runner, listen(self.host, port), backlog=BACKLOG)
                await site.start()
            except OSError as exc:
                log.error("cannot listen on %s:%d again (%s): retrying", self.host, port, exc.strerror or exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
                continue
            self.site = site
            log.info("listening sockets reopened: http://%s:%d/", self.host or "0.0.0.0", port)
            return
        log.error("cannot listen on %s:%d again: beoserv takes no new connection; restart it", self.host, port)


async def serve(options: ServerOptions, config: MasterConfig, stop: asyncio.Event | None = None) -> None:
    limit = raise_open_files_limit(config)
    asyncio.get_running_loop().set_exception_handler(exhaustion.LoopExceptionLog())  # before accept() can fail
    server = Beoserv(options, config)
    server.open_files_limit = limit
    # keepalive_timeout bounds the wait for a whole request head, from the connection's start or the last
    # response (aiohttp closes a connection whose head is incomplete by then), so a client sending it
    # byte by byte is cut off; _read_body bounds the body
    runner = web.AppRunner(
        server.make_app(), access_log=None, keepalive_timeout=config.request_timeout, logger=OneLineLog(log, {})
    )
    await runner.setup()
    try:
        site = web.SockSite(runner, listen(options.host, options.port), backlog=BACKLOG)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BeobootError(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}",
            hint="another beoserv or web server has that port: stop it, or pass --listen HOST:OTHERPORT",
        ) from None
    listener = None
    if options.bpsh_socket is not None:
        listener = LocalListener(server.jobs, options.bpsh_socket)
        try:
            listener.start()
        except BeobootError:
            await runner.cleanup()
            raise
    host, port = runner.addresses[0][:2]
    log.info("listening on http://%s:%d/ serving %s, registry %s", host, port, options.root, options.db)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    listening = Listening(runner, site, listener, options.host)

    def hang_up() -> None:
        server.reload()
        asyncio.ensure_future(listening.reopen())

    loop.add_signal_handler(signal.SIGHUP, hang_up)
    loop.add_signal_handler(signal.SIGUSR1, server.dump_state)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # bpsh hands beoserv its terminal: reading or writing it from the background of that terminal (a
    # beoserv started from the same shell) must give EIO or just write, not stop the whole server
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if listener is not None:
            listener.close()
        await runner.cleanup()
