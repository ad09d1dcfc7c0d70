"""The master's job hub: node links, bpsh sessions, the job table, and the libcache objects.

Every node keeps one WebSocket open to the master (the node opens it; nodes listen on nothing). `bpsh`
comes in on beoserv's local socket (beoboot.master.bpsh.localjobs) as a Session with a JobRequest; the hub builds
the manifest once (beoboot.master.manifest.describe), pushes a JobStart to each node, and from then on relays: stdin
and signals from the session to the jobs, output, JobStarted and JobExit from the jobs to the session. A
bpsh that goes away takes its jobs with it (SIGHUP, as a terminal would).

Jobs outlive their links and beoserv itself. A node link that drops leaves its jobs waiting for the node to
link again (LINK_WAIT; then they end with status 255, as ssh's do for a lost connection); the node keeps
their output and exits meanwhile. Each job is in the registry's jobs table, so a restarted beoserv knows
them: a node's new link opens with a JobReport of the jobs it holds, and each waits there for its bpsh to
reattach (bpsh waits for the new beoserv), which says how far its output got; the node sends the rest
(JobResume). Output is counted by offset (beoboot.master.jobstream), so each byte and each exit reaches
bpsh once: the node forgets output and exits only once bpsh's socket has them (JobAck).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from aiohttp import WSCloseCode, WSMsgType, web

from agent import protocol as p
from beoboot.errors import BeobootError
from beoboot.master import selection, transfers
from beoboot.master.config import MasterConfig
from beoboot.master.exhaustion import exhausted
from beoboot.master.jobstream import StreamCursor
from beoboot.master.manifest.describe import JobError, ManifestBuilder
from beoboot.master.manifest.describer import Describer
from beoboot.master.objects import ObjectStore, stat_key
from beoboot.master.printable import printable
from beoboot.master.registry import Registry, RegistryError
from beoboot.master.smallobjects import SmallObjects, read_object
from beoboot.master.transfers import send_file

log = logging.getLogger("beoserv")

LINK_LOST = 255
SIGHUP = 1
FINISHED_KEPT = 200  # finished jobs kept in the listing
NAMED_DOWN = 10  # nodes named in "not up" before "and N more"
# the largest frame a node's link may send: its control frames are small, its output comes in 64 KiB
# pieces (stage3.jobrunner.READ_SIZE); without a bound one frame could hold the master's memory
NODE_FRAME_MAX = 1 << 20
# bpsh -t: how long a node has to report the end of a job it was told to kill, before the job is taken
# for ended anyway (a process in uninterruptible sleep, a node too busy to answer)
KILL_ANSWER_TIME = 10.0
TIMED_OUT = 255  # the status of a job killed at its -t deadline, as clush's for a command timeout
SIGKILL = 9
ENDING_SIGNALS = frozenset({1, 2, 3, 9, 13, 15})  # HUP, INT, QUIT, KILL, PIPE, TERM: by default they end a job
# bpctl: beyond its jobs' grace time (SIGTERM to SIGKILL), how long a node may take to close its link:
# the killed jobs' exits (stage3.jobrunner.KILLED_WAIT), the last log lines, a slow link
POWER_ANSWER_TIME = 15.0
# how long a job whose node link dropped waits for the node to link again before it ends with LINK_LOST: a
# node whose master went away reconnects within its backoff (30 s at most); a node that rebooted
# registers again first, which ends its jobs at once
LINK_WAIT = 120.0
# how long a job a restarted beoserv took back waits for its bpsh to reattach (bpsh waits 300 s by default
# for the new beoserv) before it is hung up (SIGHUP) as a job whose bpsh went away
REATTACH_WAIT = 330.0
# job ids after a restart start this far past the last one recorded: the registry writes behind, so a
# killed beoserv may have given out ids it had not written yet, whose jobs still run on their nodes
ID_GAP_AFTER_RESTART = 1 << 16
EVERYTHING = 1 << 62  # an output offset past any job's: "forget all of it" in a JobAck or JobResume


class Session:
    """One bpsh run as the hub sees it: where the jobs' output, start and end go. beoboot.master.bpsh.localjobs
    has the one kind there is (bpsh on beoserv's local socket)."""

    def __init__(self) -> None:
        self.jobs: set[int] = set()
        # signals bpsh got before its jobs were sent (Ctrl-C while the manifest was built), delivered with them
        self.early_signals: list[int] = []
        self.sent = False  # the JobStarts have gone to the nodes
        # --fanout: the jobs not sent yet, each sent as an earlier one ends; and whether stdin goes to the
        # jobs (not when some start later: they would miss what the first ones read)
        self.waiting: list[tuple[int, NodeLink]] = []
        self.stdin_open = True

    def output(self, stream: int, data: bytes, node: int, job: int = 0, end: int = 0) -> None:
        """Output of `job` on `node`; `end` is the offset in that stream after `data`. Once the session has
        delivered it, it calls JobHub.delivered (now and then) so that the node may forget it."""
        raise NotImplementedError

    def job_added(self, job: int, node: int) -> None:
        """Job `job` of this session is about to start on `node`."""

    def starting(self, nodes: list[int]) -> None:
        """The session's jobs are about to start on these nodes."""

    def congested(self, node: int) -> bool:
        """Whether output from `node` must wait (a slow reader, or -s and not the node's turn yet)."""
        return False

    async def backpressure(self, node: int) -> None:
        """Return when the session can take more output from `node`."""

    def job_exit(self, message: p.JobExit) -> None:
        """A job's end; once delivered, the session calls JobHub.exit_delivered."""
        raise NotImplementedError

    def all_ended(self) -> None:
        """Every job of the session has ended (or none could start)."""
        raise NotImplementedError


@dataclass
class Job:
    row: p.JobRow
    session: Session | None  # None: its bpsh is yet to reattach (after a restart), or went away
    link: NodeLink | None  # None: its node link dropped and the node has not linked again yet
    uid: int = -1  # who ran it: only they may reattach to it
    paused: bool = False  # its output is held on the node (p.JobFlow) until the session can take more
    pacer: asyncio.Task[None] | None = None  # what resumes it
    objects: frozenset[str] = frozenset()  # the sha256 of each file of its manifest: what its node may fetch
    # its JobStart frame's text for a job id (the manifest encoded once per request), kept until it is sent:
    # at once, or when its turn comes (--fanout)
    start: Callable[[int], str] | None = None
    timeout: float = 0.0  # bpsh -t: seconds from its start to its kill
    deadline: asyncio.TimerHandle | None = None  # the -t deadline, then the wait for the killed job's end
    timed_out: bool = False
    cursor: StreamCursor = field(default_factory=StreamCursor)  # how far its output reached the session
    signals: list[int] = field(default_factory=list)  # sent while its node had no link: delivered on its return
    timer: asyncio.TimerHandle | None = None  # ends it if its node, or its bpsh, does not come back in time
    orphan: bool = False  # no bpsh will take its output: the node forgets it as it comes
    claimed: bool = False  # known only from its bpsh (the last beoserv had not recorded it): its node will say


@dataclass
class NodeLink:
    number: int
    mac: str
    ws: web.WebSocketResponse
    jobs: set[int] = field(default_factory=set)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # set when the link is down
    token: str = field(default="", repr=False)  # the registration's token the link was opened with


class JobHub:
    def __init__(
        self,
        registry: Registry,
        gate: transfers.TransferGate,
        root: str = "/",
        *,
        link_wait: float = LINK_WAIT,
        reattach_wait: float = REATTACH_WAIT,
    ) -> None:
        self.registry = registry
        self.config = MasterConfig()  # beoserv's, set again on SIGHUP: groups and the hostname prefix
        self.transfers = gate
        self.objects = ObjectStore()
        self.small_objects = SmallObjects()
        self.manifests = ManifestBuilder(self.objects, root)
        self.describer = Describer(self.manifests.build, self.manifests.budget)
        self.links: dict[int, NodeLink] = {}
        self.node_down: Callable[[int], None] = lambda number: None  # told of the nodes bpctl took down
        # the links by a hash of their token: a node's object request finds its link in one lookup, not by
        # comparing its token with every link's (that was O(nodes) per object: O(nodes^2) per job). The
        # lookup's timing depends on the token's hash, which tells a guesser nothing of any token.
        self._by_token: dict[bytes, NodeLink] = {}
        # what a node may fetch outside its jobs (the drivers its registration was answered with), by its
        # registration's token, so before its job link is up: token key -> (node number, sha256s)
        self._granted: dict[bytes, tuple[int, frozenset[str]]] = {}
        self._grant_of: dict[int, bytes] = {}  # node number -> its token key in _granted
        self.jobs: dict[int, Job] = {}
        self.finished: list[p.JobRow] = []
        # who ran each finished job, and why it failed if it did: only they hear its status again (a bpsh
        # reattaching to a job that ended while no bpsh was there)
        self._finished_by: dict[int, tuple[int, str]] = {}
        self.link_wait, self.reattach_wait = link_wait, reattach_wait
        self._exit_acks: dict[int, tuple[NodeLink | None, p.JobAck]] = {}  # exits on their way to bpsh
        self.duplicate_bytes = 0  # output nodes sent again that the sessions had: dropped
        restarted = bool(registry.jobs_at_start)
        self._recorded_upto = registry.last_job_id  # ids past it a killed beoserv may have given unrecorded
        self._ids = itertools.count(registry.last_job_id + 1 + (ID_GAP_AFTER_RESTART if restarted else 0))
        for row, uid in registry.jobs_at_start:  # what the last beoserv left: its running jobs wait for reattach
            if row.state in (p.JobState.STARTING, p.JobState.RUNNING):
                self.jobs[row.job] = Job(row, None, None, uid=uid)
            else:
                self._keep_finished(row, uid, "")
        if self.jobs:
            log.info("%d jobs of the last beoserv wait for their nodes and their bpsh", len(self.jobs))

    def add_routes(self, app: web.Application) -> None:
        """Before the boot tree's catch-all GET route."""
        app.router.add_get(p.JOBS_LINK_PATH, self.node_link)
        app.router.add_get(p.JOBS_PATH, self.list_jobs)
        app.router.add_get(p.OBJECTS_PATH.replace("{digest}", "{digest:[0-9a-f]{64}}"), self.serve_object)
        app.router.add_post(p.OBJECTS_BATCH_PATH, self.serve_objects)
        app.on_shutdown.append(self.close_all)
        app.on_startup.append(self._start_waiting)

    async def _start_waiting(self, app: web.Application) -> None:
        """The jobs taken from the registry: each waits so long for its node and its bpsh."""
        for job_id, job in self.jobs.items():
            self._wait_for_bpsh(job_id, job)

    async def close_all(self, app: web.Application) -> None:
        """Close every link and session at shutdown: aiohttp would otherwise wait for these long-lived
        handlers for its whole shutdown timeout."""
        log.info("jobs: %d output bytes sent again by nodes were dropped as duplicates", self.duplicate_bytes)
        for link in list(self.links.values()):
            await link.ws.close()

    # --- objects ------------------------------------------------------------------------------------------

    def grant(self, number: int, token: str, digests: frozenset[str]) -> None:
        """Node `number`, registered with `token`, may fetch these objects (the drivers sent to it), besides
        what it was granted before with the same token; a new registration's token drops the old grant."""
        old = self._grant_of.pop(number, None)
        if old is not None:
            _, before = self._granted.pop(old)
            digests |= before if old == _token_key(token) else frozenset()
        if digests:
            self._granted[_token_key(token)] = (number, digests)
            self._grant_of[number] = _token_key(token)

    async def serve_object(self, request: web.Request) -> web.StreamResponse:
        """OBJECTS_PATH: an object, to a node that may have it (_reader_of). A big one waits for a transfer
        slot (beoboot.master.transfers)."""
        digest = request.match_info["digest"]
        number = self._reader_of(request.headers.get(p.LINK_TOKEN_HEADER, ""), digest)
        found = self.objects.find(digest)
        if found is None:
            raise _gone()
        try:
            return await send_file(
                self.transfers,
                transfers.node_key(number),
                found.path,
                request,
                lambda st: stat_key(st) == found.key,
            )
        except OSError as exc:
            if exhausted(exc):
                raise  # a 503 (beoboot.master.server): the node retries, as it would not after a 404
            raise _gone() from None

    async def serve_objects(self, request: web.Request) -> web.StreamResponse:
        """OBJECTS_BATCH_PATH: small objects (at most BATCH_OBJECT_MAX bytes each, BATCH_BYTES_MAX in all),
        each to a node that may have it (_reader_of), their bytes one after another, from memory
        (beoboot.master.smallobjects). One object the node may not have, or that is gone, answers the
        whole batch as serve_object would have answered it; the node then fetches them one by one. A batch
        bigger than a socket's buffer takes a transfer slot, as a file would: the bytes beoserv holds for
        answers being sent stay bounded by the slots."""
        token = request.headers.get(p.LINK_TOKEN_HEADER, "")
        try:
            batch = p.from_json(p.ObjectBatch, await request.read())
        except p.ProtocolError as exc:
            raise web.HTTPBadRequest(text=f"not an object batch: {exc}\n") from None
        if not 0 < len(batch.sha256) <= p.BATCH_COUNT_MAX or not all(p.SHA256_HEX.fullmatch(d) for d in batch.sha256):
            raise web.HTTPBadRequest(text=f"a batch is 1 to {p.BATCH_COUNT_MAX} sha256 digests in hex\n")
        parts = []
        size = 0
        number = -1
        for digest in batch.sha256:
            number = self._reader_of(token, digest)
            found = self.objects.find(digest)
            if found is None:
                raise _gone()
            size += found.size
            if found.size > p.BATCH_OBJECT_MAX or size > p.BATCH_BYTES_MAX:
                raise web.HTTPBadRequest(
                    text=f"a batch holds objects of at most {p.BATCH_OBJECT_MAX} bytes, {p.BATCH_BYTES_MAX} in all\n"
                )
            data = self.small_objects.cached(found)
            if data is None:
                try:
                    data = await asyncio.to_thread(read_object, found)  # not on the loop: NFS may be slow
                except OSError as exc:
                    if exhausted(exc):
                        raise
                    data = None
                if data is None:
                    raise _gone()
                self.small_objects.keep(found, data)
            parts.append(data)
        slot = await self.transfers.admit(transfers.node_key(number)) if size > transfers.SMALL_FILE else None
        try:
            response = web.StreamResponse()
            response.content_type = "application/octet-stream"
            response.content_length = size
            if slot is not None and self.transfers.contended:
                response.force_close()  # its descriptor goes to the next transfer, as send_file's
            await response.prepare(request)
            for data in parts:
                await response.write(data)  # waits while the socket is full: no answer piles up in memory
            await response.write_eof()
            return response
        finally:
            if slot is not None:
                slot.release()

    def _reader_of(self, token: str, digest: str) -> int:
        """The number of the node whose link token is `token`, if it may have the object `digest`: an
        object of one of its live jobs, or a driver its registration was answered with (grant). Not anyone
        who can reach the port, nor a node for another node's job, either of which could otherwise fetch
        another user's file by its hash, or test guesses of its content. 403, or 404 as for an object the
        master does not have: a node learns nothing of other jobs."""
        number, granted = self._granted.get(_token_key(token), (-1, frozenset())) if token else (-1, frozenset())
        if digest in granted:
            return number
        link = self._by_token.get(_token_key(token)) if token else None
        if link is None or self.links.get(link.number) is not link:
            raise web.HTTPForbidden(text=f"objects go to nodes with a job link up: {p.LINK_TOKEN_HEADER} of one\n")
        if not any(digest in self.jobs[job_id].objects for job_id in link.jobs if job_id in self.jobs):
            raise web.HTTPNotFound(text="no such object in this node's jobs\n")
        return link.number

    # --- listing ------------------------------------------------------------------------------------------

    def rows(self) -> tuple[p.JobRow, ...]:
        return tuple(self.finished) + tuple(job.row for job in self.jobs.values())

    async def list_jobs(self, request: web.Request) -> web.Response:
        return web.Response(text=p.to_json(p.JobList(self.rows())), content_type="application/json")

    # --- node side ----------------------------------------------------------------------------------------

    async def drop_link(self, number: int, why: str) -> None:
        """A registration issued the node a new link token: the link opened with the old one closes (its
        jobs end with LINK_LOST), and only the machine that registered last can open it again."""
        link = self.links.get(number)
        if link is not None:
            log.warning("node %d job link from before its registration closed: %s", number, why)
            await link.ws.close()

    async def node_link(self, request: web.Request) -> web.StreamResponse:
        mac = p.normalise_mac(request.query.get("mac", ""))
        node = self.registry.node_by_mac(mac)
        if node is None:
            raise web.HTTPNotFound(text=f"node {mac} is not registered: register first\n")
        token = request.headers.get(p.LINK_TOKEN_HEADER, "")
        if not node.link_token or not hmac.compare_digest(token.encode(), node.link_token.encode()):
            log.warning(
                "node %d (%s) job link refused from %s: not the token of its last registration",
                node.number,
                mac,
                request.remote,
            )
            raise web.HTTPForbidden(
                text=f"node {node.number} ({mac}): the job link needs the token of the node's last registration "
                f"({p.LINK_TOKEN_HEADER}); register again\n"
            )
        ws = web.WebSocketResponse(max_msg_size=NODE_FRAME_MAX)
        await ws.prepare(request)
        old = self.links.get(node.number)
        link = NodeLink(node.number, mac, ws, token=node.link_token)
        self.links[node.number] = link
        self._by_token[_token_key(node.link_token)] = link
        if old is not None:
            await old.ws.close()
        log.info("node %d (%s) job link up from %s", node.number, mac, request.remote)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        frame = p.decode_frame(msg.data)
                    except p.ProtocolError as exc:
                        await _refuse_frame(ws, node.number, mac, str(exc))
                        break
                    await self._from_node(link, frame)
                elif msg.type == WSMsgType.BINARY:
                    stream, job_id, offset = _output_header(msg.data)
                    if stream not in (p.Stream.STDOUT, p.Stream.STDERR):
                        await _refuse_frame(ws, node.number, mac, f"an output frame of {len(msg.data)} bytes")
                        break
                    job = self.jobs.get(job_id)
                    if job is not None and job.link is link:  # another node cannot write to this job
                        await self._output(job_id, job, stream, offset, msg.data[p.OUTPUT_HEADER_SIZE :])
        finally:
            link.closed.set()
            if self.links.get(node.number) is link:
                del self.links[node.number]
            if self._by_token.get(_token_key(link.token)) is link:
                del self._by_token[_token_key(link.token)]
            for job_id in list(link.jobs):  # they run on: their node keeps their output until it links again
                job = self.jobs.get(job_id)
                if job is not None and job.link is link and job.start is not None:  # never sent (--fanout)
                    gone = p.JobExit(job_id, LINK_LOST, node=node.number, error=f"node {node.number} job link lost")
                    asyncio.ensure_future(self._finish(job_id, gone))
                elif job is not None and job.link is link:
                    self._unlink(job_id, job)
            link.jobs.clear()
            log.info("node %d (%s) job link down", node.number, mac)
        return ws

    def _unlink(self, job_id: int, job: Job) -> None:
        job.link = None
        if job.pacer is not None:
            job.pacer.cancel()
        job.paused = False
        if job.timer is not None:
            job.timer.cancel()

        def give_up() -> None:
            if self.jobs.get(job_id) is job and job.link is None:
                error = f"node {job.row.node} job link lost, and not back within {self.link_wait:g} s"
                asyncio.ensure_future(
                    self._finish(job_id, p.JobExit(job_id, LINK_LOST, node=job.row.node, error=error))
                )

        job.timer = asyncio.get_running_loop().call_later(self.link_wait, give_up)

    def _wait_for_bpsh(self, job_id: int, job: Job) -> None:
        """A job with no bpsh (a restarted beoserv's): hung up if none reattaches in time."""
        if job.timer is not None:
            job.timer.cancel()

        def give_up() -> None:
            if self.jobs.get(job_id) is job and job.session is None:
                log.info("job %d: no bpsh reattached within %g s: hung up", job_id, self.reattach_wait)
                self._orphan(job_id, job)

        job.timer = asyncio.get_running_loop().call_later(self.reattach_wait, give_up)

    def _orphan(self, job_id: int, job: Job) -> None:
        """No one will take the job's output: SIGHUP, as a closed terminal's job gets, and let it drain."""
        job.orphan = True
        job.signals.append(SIGHUP)
        if job.link is not None:
            self._resume(job_id, job)

    def _resume(self, job_id: int, job: Job) -> None:
        """Its node is linked and someone takes its output: ask the node for the rest of it."""
        assert job.link is not None
        offsets = (EVERYTHING, EVERYTHING) if job.orphan else job.cursor.offsets()
        _post(job.link.ws, p.JobResume(job_id, *offsets))
        for signum in job.signals:
            _post(job.link.ws, p.JobSignal(job_id, signum))
        job.signals.clear()

    async def _output(self, job_id: int, job: Job, stream: int, offset: int, data: bytes) -> None:
        assert job.link is not None
        if job.session is None:
            if job.orphan:  # no one reads it: forget it on the node as it comes
                _post(job.link.ws, p.JobAck(job_id, EVERYTHING, EVERYTHING))
            return
        taken = job.cursor.take(stream, offset, data)
        self.duplicate_bytes += len(data) - len(taken.data)
        if taken.ask_from:
            log.info("job %d: output from %d on stream %d missing: asked again", job_id, taken.end, stream)
            await _send(job.link.ws, p.JobResume(job_id, *job.cursor.offsets()))
        if not taken.data:
            return
        job.session.output(stream, taken.data, job.link.number, job_id, taken.end)
        if not job.paused and job.session.congested(job.link.number):
            self._pace(job_id, job)

    def delivered(self, job_id: int, stdout: int, stderr: int) -> None:
        """The session has the job's output up to these offsets where nothing can take it back (bpsh's
        socket): its node may forget it."""
        job = self.jobs.get(job_id)
        if job is not None and job.link is not None:
            _post(job.link.ws, p.JobAck(job_id, stdout, stderr))

    def exit_delivered(self, job_id: int) -> None:
        """The session has the job's exit where nothing can take it back: its node may forget the job."""
        link, ack = self._exit_acks.pop(job_id, (None, None))
        if link is not None and ack is not None:
            _post(link.ws, ack)

    async def _take_back(self, link: NodeLink, report: p.JobReport) -> None:
        """A new link's report: the node's jobs are linked to it again, and resumed where their bpsh is (or
        wait for it); jobs of that node missing from the report ended unseen (the node rebooted)."""
        held_ids = set()
        for held in report.jobs:
            held_ids.add(held.job)
            job = self.jobs.get(held.job)
            if job is not None and job.claimed and job.row.node == link.number:  # its bpsh came back first
                if job.uid == held.uid:
                    job.claimed = False
                    job.row = replace(job.row, pid=held.pid, command=held.command)
                    self.registry.record_job(job.row, job.uid)
                else:
                    error = f"job {held.job} is not uid {job.uid}'s"
                    await self._finish(held.job, p.JobExit(held.job, LINK_LOST, error=error))
                    job = None
            if job is None and held.uid >= 0:
                # a job the last beoserv started and had not recorded yet: the node's word for it
                row = p.JobRow(held.job, link.number, held.pid, held.command, p.JobState.RUNNING, time.time())
                job = self.jobs[held.job] = Job(row, None, None, uid=held.uid)
                self.registry.record_job(row, held.uid)
            if job is None or job.row.node != link.number:
                # another node's id, or no one's: the node forgets it (and hangs it up if it runs)
                await _send(link.ws, p.JobSignal(held.job, SIGHUP))
                await _send(link.ws, p.JobResume(held.job, EVERYTHING, EVERYTHING))  # drains, then ends
                await _send(link.ws, p.JobAck(held.job, EVERYTHING, EVERYTHING, exit=True))
                continue
            if job.timer is not None:  # the wait for its node is over
                job.timer.cancel()
                job.timer = None
            job.link = link
            link.jobs.add(held.job)
            if held.pid and (job.row.pid, job.row.state) != (held.pid, p.JobState.RUNNING):
                job.row = replace(job.row, pid=held.pid, state=p.JobState.RUNNING)
                self.registry.record_job(job.row, job.uid)
            if job.session is not None or job.orphan:
                self._resume(held.job, job)
            else:
                self._wait_for_bpsh(held.job, job)
        for job_id, job in list(self.jobs.items()):
            if job.row.node == link.number and job.link is None and job_id not in held_ids:
                error = f"node {link.number} linked again without job {job_id}: it rebooted, or ended it unseen"
                await self._finish(job_id, p.JobExit(job_id, LINK_LOST, node=link.number, error=error))

    def _pace(self, job_id: int, job: Job) -> None:
        """Hold this job's output on its node until its session can take more: the link goes on being read,
        so the node's other jobs (other users' among them) are not held up by one slow reader."""
        job.paused = True
        link, session = job.link, job.session
        assert link is not None and session is not None  # a job's output came from its link, for its session

        async def pause_until_drained() -> None:
            await _send(link.ws, p.JobFlow(job_id, False))
            await session.backpressure(link.number)
            job.paused = False
            if job_id in self.jobs:
                await _send(link.ws, p.JobFlow(job_id, True))

        job.pacer = asyncio.get_running_loop().create_task(pause_until_drained())

    async def _from_node(self, link: NodeLink, message: object) -> None:
        """A node speaks only for its own jobs: an id of another node's job is ignored."""
        if isinstance(message, p.JobReport):
            await self._take_back(link, message)
        elif isinstance(message, (p.JobStarted, p.JobExit)):
            job = self.jobs.get(message.job)
            if job is None or job.link is not link:
                if isinstance(message, p.JobExit):  # an end already counted (a resend): the node may forget it
                    await _send(link.ws, p.JobAck(message.job, EVERYTHING, EVERYTHING, exit=True))
                return
            if isinstance(message, p.JobStarted):
                job.row = replace(job.row, pid=message.pid, state=p.JobState.RUNNING)
                self.registry.record_job(job.row, job.uid)
            else:
                await self._finish(message.job, replace(message, node=link.number))

    async def _finish(self, job_id: int, message: p.JobExit) -> None:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        if job.pacer is not None:
            job.pacer.cancel()
        if job.timer is not None:
            job.timer.cancel()
        if job.deadline is not None:
            job.deadline.cancel()
        if job.timed_out:
            message = replace(
                message, status=TIMED_OUT, error=f"command timeout: still running after -t {job.timeout:g} s, killed"
            )
        if job.link is not None:
            job.link.jobs.discard(job_id)
        state = p.JobState.FAILED if message.error and message.status in (127, LINK_LOST) else p.JobState.EXITED
        row = replace(job.row, state=state, status=message.status)
        self._keep_finished(row, job.uid, message.error)
        self.registry.record_job(row, job.uid)
        ack = p.JobAck(job_id, EVERYTHING, EVERYTHING, exit=True)
        if job.session is None:
            if job.link is not None:
                await _send(job.link.ws, ack)
            return
        self._exit_acks[job_id] = (job.link, ack)  # sent once the session delivered the exit
        job.session.jobs.discard(job_id)
        job.session.job_exit(message)
        if job.start is None:  # it ran: its place goes to the next waiting job (--fanout)
            await self._send_next(job.session)
        if not job.session.jobs:
            job.session.all_ended()

    def _never_ended(self, job_id: int) -> bool:
        return not any(row.job == job_id for row in self.finished)

    def _keep_finished(self, row: p.JobRow, uid: int, error: str) -> None:
        self.finished.append(row)
        self._finished_by[row.job] = (uid, error)
        for gone in self.finished[:-FINISHED_KEPT]:
            self._finished_by.pop(gone.job, None)
        del self.finished[:-FINISHED_KEPT]

    # --- bpsh side ----------------------------------------------------------------------------------------

    async def run(self, session: Session, request: p.JobRequest) -> None:
        """Start the request's jobs for this session; a request that cannot run ends the session with 127
        and the reason (command not found, node not up, ...)."""
        try:
            await self._start(session, request)
        except selection.SelectionError as exc:  # not a node set: a usage error, as bpsh's own are
            self._refuse(session, str(exc), exc.exit_code)
        except (BeobootError, p.ProtocolError, OSError) as exc:
            self._refuse(session, str(exc))
        except Exception as exc:  # a bug: bpsh must still hear of it and end, not wait for ever
            log.exception("bpsh request %r failed", request.argv[:1])
            self._refuse(session, f"beoserv could not start the job: {exc!r} (see beoserv's log)")

    def _refuse(self, session: Session, why: str, status: int = 127) -> None:
        if session.jobs:  # some started before it failed: they end as they will, and end the session
            log.warning("bpsh request failed after some of its jobs started: %s", why)
            return
        session.job_exit(p.JobExit(0, status, error=why))
        session.all_ended()

    async def stdin(self, session: Session, data: bytes) -> None:
        """Input for every job of the session (each node gets the same bytes); b"" is end of file."""
        for job_id in list(session.jobs):
            job = self.jobs.get(job_id)
            if job is not None and job.start is None and job.link is not None and not job.link.ws.closed:
                try:
                    await job.link.ws.send_bytes(struct.pack(p.IO_HEADER, p.Stream.STDIN, job_id) + data)
                except ConnectionError:
                    pass

    async def hang_up(self, session: Session) -> None:
        """bpsh went away while its jobs ran: they get SIGHUP, as a closed terminal's jobs would, and their
        output, which no one reads now, flows again so that their ends are seen."""
        await self.signal(session, SIGHUP)
        for job_id in list(session.jobs):
            job = self.jobs.get(job_id)
            if job is not None and job.pacer is not None and job.link is not None:
                job.pacer.cancel()
                await _send(job.link.ws, p.JobFlow(job_id, True))

    def select(self, nodes: str, exclude: str = "", *, linked: bool = True) -> list[int]:
        """The nodes a node set names (beoboot.master.selection), less `exclude`; with `linked`, @up (and
        bpsh's `all`, -a) is the nodes a job can start on: up, with their job link open."""
        resolve = selection.resolver(self.registry, dict(self.config.group_nodes), self.links if linked else None)
        return selection.select(nodes, exclude, resolve, self.config.hostname_prefix)

    def _nodes_for(self, request: p.JobRequest) -> list[int]:
        """The nodes a request runs on: each must have its job link and be up in the registry (stage 3
        ready, heartbeats on time): a node that registered and never booted, or went silent, gets no job.
        `@up` (`-a`) takes every such node; a set naming any other node is refused, naming them."""
        wanted = self.select(request.nodes, request.exclude)
        if not wanted:
            excluded = f" -x {request.exclude!r}" if request.exclude else ""
            raise JobError(f"{request.nodes!r}{excluded} names no node that is up", hint="bpstat shows the nodes")
        up = self.registry.numbers_in_state(p.NodeState.UP)
        unlinked = [n for n in wanted if n not in self.links]
        not_up = [n for n in wanted if n in self.links and n not in up]
        reasons = []
        if unlinked:
            reasons.append(f"node {_named(unlinked)} {'is' if len(unlinked) == 1 else 'are'} not up (no job link)")
        if not_up:
            reasons.append(f"node {_named(not_up)} {'is' if len(not_up) == 1 else 'are'} not up (booting or silent)")
        if reasons:
            raise JobError("; ".join(reasons), hint="bpstat shows the nodes; @up names the nodes that are")
        return wanted

    async def _start(self, session: Session, request: p.JobRequest) -> None:
        numbers = self._nodes_for(request)
        # a cached manifest is a few lstat() calls, less than a thread hand-off; a new one would block the
        # event loop (ELF parsing, hashing), and runs on a thread of its own, a few per user (Describer)
        manifest = self.manifests.build_cached(request)
        if manifest is None:
            manifest = await self.describer.describe(request)
        command = " ".join(request.argv)
        now = time.time()
        objects = frozenset(f.sha256 for f in manifest.files if f.sha256)
        session.starting(numbers)
        # every job is in the tables before the first is sent, so that one ending at once cannot end the
        # session before the others started; a link lost while the manifest was built ends its node's job
        starts = []
        start = p.job_start_frames(manifest)
        for number in numbers:
            job_id = next(self._ids)
            link = self.links.get(number)
            if link is None:
                session.job_exit(p.JobExit(job_id, LINK_LOST, node=number, error=f"node {number} job link lost"))
                continue
            row = p.JobRow(job_id, number, 0, command, p.JobState.STARTING, now)
            self.jobs[job_id] = Job(
                row, session, link, uid=request.uid, objects=objects, start=start, timeout=request.timeout
            )
            self.registry.record_job(row, request.uid)
            session.jobs.add(job_id)
            session.job_added(job_id, number)
            link.jobs.add(job_id)
            starts.append((job_id, link))
        if not starts:
            session.all_ended()
            return
        fanout = request.fanout or len(starts)
        session.stdin_open = request.stdin and fanout >= len(starts)
        session.waiting = starts[fanout:]
        for job_id, link in starts[:fanout]:
            await self._send_start(session, job_id, link)
        session.sent = True
        for signum in session.early_signals:
            await self.signal(session, signum)
        session.early_signals.clear()

    async def _send_start(self, session: Session, job_id: int, link: NodeLink) -> None:
        """Send a job's JobStart (and, without stdin, its end of file); start its -t clock."""
        job = self.jobs.get(job_id)
        if job is None or job.start is None:
            return
        start, job.start = job.start, None
        await _send_text(link.ws, start(job_id))
        if not session.stdin_open:
            await _send_bytes(link.ws, struct.pack(p.IO_HEADER, p.Stream.STDIN, job_id))
        if job.timeout:
            job.deadline = asyncio.get_running_loop().call_later(job.timeout, self._time_out, job_id)

    async def _send_next(self, session: Session) -> None:
        """--fanout: a job ended, so the next waiting one starts. (One whose link was lost meanwhile has ended
        with the link, taking no place.)"""
        while session.waiting:
            job_id, _ = session.waiting.pop(0)
            job = self.jobs.get(job_id)
            if job is None or job.link is None:
                continue
            await self._send_start(session, job_id, job.link)
            return

    def _time_out(self, job_id: int) -> None:
        """-t: the job ran past its deadline: kill it (its end reports the timeout); if its node does not
        report the end within KILL_ANSWER_TIME, it is taken for ended."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        job.timed_out = True
        log.info("job %d on node %d: killed at its -t deadline of %g s", job_id, job.row.node, job.timeout)
        if job.link is None:
            job.signals.append(SIGKILL)  # its node is away: delivered if it comes back in time
        else:
            asyncio.ensure_future(_send(job.link.ws, p.JobSignal(job_id, SIGKILL)))
        gone = p.JobExit(job_id, TIMED_OUT, node=job.row.node)
        job.deadline = asyncio.get_running_loop().call_later(
            KILL_ANSWER_TIME, lambda: asyncio.ensure_future(self._finish(job_id, gone))
        )

    # --- bpctl ------------------------------------------------------------------------------------------

    async def power(self, order: p.NodePower, nodes: str, exclude: str = "") -> list[str]:
        """Send `order` to each node of the node set `nodes` ('0,3', 'n[0-7]', '@up', 'all': every node
        up with its job link), less `exclude`, and wait for each to end its jobs and close its link; the
        node is then DOWN, with the order in its boot's timeline. Returns the failures, one line per node
        (an empty list: every node acted)."""
        numbers = self.select(nodes, exclude)
        if not numbers:
            raise JobError(f"{nodes!r} names no node that is up with a job link", hint="bpstat shows the nodes")
        results = await asyncio.gather(*(self._power_one(number, order) for number in numbers))
        return [failure for failure in results if failure]

    async def _power_one(self, number: int, order: p.NodePower) -> str:
        link, node = self.links.get(number), self.registry.node_by_number(number)
        if link is None or node is None:
            return f"node {number} is not up (no job link): nothing to {order.action}"
        log.info("node %d: %s, as %s asked", number, order.action, order.by)
        await _send(link.ws, order)
        wait = order.grace + POWER_ANSWER_TIME
        try:
            await asyncio.wait_for(link.closed.wait(), wait)
        except asyncio.TimeoutError:
            return f"node {number} did not close its job link within {wait:g} s of the {order.action} order"
        self.registry.mark_down(number, node.boot, time.time(), order.action, f"bpctl, as {order.by} asked")
        self.node_down(number)
        return ""

    async def signal(self, session: Session, signum: int) -> None:
        if not session.sent:
            session.early_signals.append(signum)
            return
        if signum in ENDING_SIGNALS and session.waiting:  # Ctrl-C: the jobs still waiting (--fanout) never start
            never, session.waiting = session.waiting, []
            for job_id, link in never:
                await self._finish(job_id, p.JobExit(job_id, 128 + signum, signal=signum, node=link.number))
        for job_id in list(session.jobs):
            job = self.jobs.get(job_id)
            if job is None or job.start is not None:
                continue  # ended, or not started yet (--fanout): nothing to signal
            if job.link is None or job.link.ws.closed:
                job.signals.append(signum)  # delivered when its node links again
            else:
                await _send(job.link.ws, p.JobSignal(job_id, signum))

    def reattach(self, session: Session, uid: int, wanted: list[tuple[int, int, int, int]]) -> None:
        """A bpsh came back (after a beoserv restart) for its jobs: (id, stdout offset, stderr offset, node)
        each, the offsets being how far their output reached it. A job that is not the user's, or unknown,
        ends for it with 255; one that ended meanwhile gives its status."""
        session.sent = True
        for job_id, stdout, stderr, node in wanted:
            job = self.jobs.get(job_id)
            unrecorded = self._recorded_upto < job_id <= self._recorded_upto + ID_GAP_AFTER_RESTART
            if job is None and unrecorded and node not in self.links and self._never_ended(job_id):
                # a job the last beoserv had not recorded when it went: its node's report will say whose (a
                # node linked already did not hold it)
                row = p.JobRow(job_id, node, 0, "", p.JobState.RUNNING, time.time())
                job = self.jobs[job_id] = Job(row, None, None, uid=uid, claimed=True)
            if job is None or job.uid != uid or job.session is not None:
                ended = next((row for row in self.finished if row.job == job_id), None)
                by, why = self._finished_by.get(job_id, (-1, ""))
                if ended is not None and ended.status is not None and by == uid:
                    session.job_exit(p.JobExit(job_id, ended.status, node=ended.node, error=why))
                elif job is None and node in self.links and self._never_ended(job_id):
                    error = f"node {node} linked again without job {job_id}: it rebooted, or ended it unseen"
                    session.job_exit(p.JobExit(job_id, LINK_LOST, node=node, error=error))
                else:
                    error = f"beoserv has no running job {job_id} of uid {uid} to reattach to"
                    session.job_exit(p.JobExit(job_id, LINK_LOST, error=error))
                continue
            if job.timer is not None:
                job.timer.cancel()  # the wait for a bpsh is over
                job.timer = None
            job.session, job.orphan = session, False
            job.cursor = StreamCursor.at(stdout, stderr)
            session.jobs.add(job_id)
            if job.link is not None:
                self._resume(job_id, job)
            else:
                self._unlink(job_id, job)  # now the wait for its node
            log.info("job %d: bpsh reattached at output offsets %d, %d", job_id, stdout, stderr)
        if not session.jobs:
            session.all_ended()


def _gone() -> web.HTTPNotFound:
    return web.HTTPNotFound(text="no such object: it was never in a manifest, or the file changed since\n")


def _token_key(token: str) -> bytes:
    # surrogateescape: a header that is not UTF-8 names no link, and is no reason to fail the request
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _named(numbers: list[int]) -> str:
    """'1, 2, 3' or, past NAMED_DOWN, '1, ..., 10 and 30 more'."""
    more = f" and {len(numbers) - NAMED_DOWN} more" if len(numbers) > NAMED_DOWN else ""
    return ", ".join(map(str, numbers[:NAMED_DOWN])) + more


async def _refuse_frame(ws: web.WebSocketResponse, number: int, mac: str, what: str) -> None:
    """A node that sends what no node sends has its link closed (its jobs end as if the link were lost):
    its next frame could not be trusted to mean what it says either."""
    log.warning("node %d (%s) job link closed: it sent %s", number, mac, printable(what))
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"bad frame")


async def _send_bytes(ws: web.WebSocketResponse, data: bytes) -> None:
    if not ws.closed:
        try:
            await ws.send_bytes(data)
        except ConnectionError:
            pass


def _output_header(frame: bytes) -> tuple[int, int, int]:
    """(stream, job, offset) of an output frame; stream 0 (never output) for one too short to hold them."""
    if len(frame) < p.OUTPUT_HEADER_SIZE:
        return 0, 0, 0
    stream, job, offset = struct.unpack_from(p.OUTPUT_HEADER, frame)
    return stream, job, offset


def _post(ws: web.WebSocketResponse, message: object) -> None:
    """_send from code that cannot wait (a callback): queued on the loop."""
    asyncio.ensure_future(_send(ws, message))


async def _send(ws: web.WebSocketResponse, message: object) -> None:
    await _send_text(ws, p.encode_frame(message))


async def _send_text(ws: web.WebSocketResponse, text: str) -> None:
    if not ws.closed:
        try:
            await ws.send_str(text)
        except ConnectionError:
            pass


__all__ = ["JobHub", "RegistryError"]
