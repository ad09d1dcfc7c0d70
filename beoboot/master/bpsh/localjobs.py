"""beoserv's local socket for `bpsh` (beoboot.master.bpsh.client is the client; its docstring has the wire format)."""

# Why a local socket and not the HTTP port: the kernel tells beoserv who is asking (SO_PEERCRED), so a job
# runs as the user who typed bpsh and nobody can claim another user's identity or reach it from a node;
# and the client can hand over its own stdin, stdout and stderr (SCM_RIGHTS), which keeps the client
# small enough to start in a few milliseconds.
#
# The jobs' output goes to bpsh as records on its socket, and bpsh writes it: the one that writes it is the
# one that knows what it wrote, which a restarted beoserv asks when bpsh reattaches (its offsets per job
# and stream). What beoserv has put into bpsh's socket cannot be lost by a beoserv that dies after (bpsh
# reads it first), so that is when the node may forget it (JobHub.delivered, every ACK_EVERY bytes).
#
# Sends to the client may block (a pipe to a slow reader behind it, a terminal stopped with Ctrl-S), so
# they are done by a writer thread per session, started on the first record; the event loop never blocks
# on them. stdin is read on the loop when the kernel can poll it (a terminal, a pipe, a
# socket), by a thread when it cannot (a regular file), and not at all when it is /dev/null; either way at
# most STDIN_AHEAD chunks ahead of what the nodes took (`bpsh 0 cat </dev/zero` would fill beoserv's memory).

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import select
import signal
import socket
import stat
import struct
import threading
from dataclasses import replace
from pathlib import Path
from queue import Empty
from typing import cast

from agent import protocol as p
from beoboot.errors import BeobootError
from beoboot.master.bpsh import bpctl
from beoboot.master.bpsh import client as bpsh
from beoboot.master.bpsh.folded import FoldedOutput
from beoboot.master.bpsh.sequential import SequentialOutput
from beoboot.master.jobhub import JobHub, Session

log = logging.getLogger("beoserv")

USAGE_STATUS = 2
READ_SIZE = 65536
QUEUE_HIGH, QUEUE_LOW = 8 << 20, 2 << 20  # output waiting for a slow bpsh reader: stop reading the node at HIGH
STDIN_AHEAD = 16  # chunks of stdin read and not yet sent to the nodes (1 MiB): then stop reading stdin
FOREGROUND_POLL = 0.1  # s: how soon a `fg` of a bpsh running in the background gets its stdin forwarded
PARTIAL_LINE_MAX = 64 << 10  # bpsh -p holds at most this much of a line waiting for its newline
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13; Python 3.11's socket module lacks the name
GETSOCKOPT_MAX = 1024  # the largest buffer Python's getsockopt takes: 256 groups
DEV_NULL = os.makedev(1, 3)
# output bytes per record: a node's chunk (64 KiB) fits whole; a SEQPACKET record must fit the socket's send
# buffer (net.core.wmem_default, 208 KiB), and bpsh reads records of up to client.RECORD_MAX
RECORD_DATA_MAX = 128 << 10
OUTPUT_RECORD_HEADER = 18  # b"O", stream, job, end: output_head()
ACK_EVERY = 256 << 10  # output bytes per job delivered between acks to its node (stage3.outputlog.WINDOW: 1 MiB)
MAX_REATTACH_JOBS = 1 << 20  # jobs in one reattach request: as many as a node list holds (jobhub.MAX_NODES)
SEND_POLL = 1.0  # s: how long the writer waits at a time for room in a full socket


class Marked(bytes):
    """Output bytes that, once delivered, take their job's stream to an offset: mark = (job, stream, end).
    A bytes, so that it passes through SequentialOutput, which holds and reorders output, unchanged."""

    mark: tuple[int, int, int] | None = None


def marked(data: bytes, mark: tuple[int, int, int] | None) -> bytes:
    if mark is None:
        return data
    chunk = Marked(data)
    chunk.mark = mark
    return chunk


_END = object()  # the end of the queue, met while joining records


Queued = tuple[bytes, bytes, object]  # a record's head, its data (output), what its delivery means


def _joins(then: object, following: Queued, size: int) -> bool:
    """Whether the queued item `following` is output of the same job and stream as `then`, that fits."""
    _, data, after = following
    return (
        isinstance(after, tuple)
        and isinstance(then, tuple)
        and after[:2] == then[:2]
        and size + len(data) <= RECORD_DATA_MAX
    )


def output_head(stream: int, job: int, end: int) -> bytes:
    """An output record's head: b"O", the stream, the job and the offset its stream reaches with the data
    that follows (0 and 0: no job's, e.g. an error line)."""
    return b"O" + bytes((stream,)) + job.to_bytes(8, "big") + end.to_bytes(8, "big")


class RequestError(Exception):
    pass


def peer_groups(conn: socket.socket, pid: int, uid: int) -> tuple[int, ...]:
    """The supplementary groups the bpsh process had when it connected, as the kernel recorded them: the
    job gets the groups a command run here would have (a project group that owns the data, say), and a
    user cannot claim a group they are not in."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GETSOCKOPT_MAX)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            raise
        # more than 256 groups: the client's own, read while it waits for this request's answer. Had it
        # died and its pid been taken, the entry would be another process's: the real uid must match
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = {line.split(":")[0]: line.split()[1:] for line in status}
        except OSError:
            fields = {}
        if fields.get("Uid", [None])[0] != str(uid) or "Groups" not in fields:
            raise RequestError(
                "cannot read the groups of this bpsh (more than 256): it ended, or is another's"
            ) from None
        return tuple(int(gid) for gid in fields["Groups"])
    return struct.unpack(f"{len(raw) // 4}I", raw)  # gid_t: 32 bits


def decode_request(data: bytes, uid: int, gid: int, groups: tuple[int, ...] = ()) -> tuple[p.JobRequest, str]:
    """A bpsh request record -> (JobRequest as user uid:gid with those supplementary groups, the option
    letters: n for -n, p for -p, s for -s, d for -d, b for -b)."""
    fields = data.split(b"\0")
    if len(fields) < 6 or fields[0] != bpsh.REQUEST_MAGIC:
        raise RequestError("not a bpsh request (another version of bpsh?)")

    def text(field: bytes) -> str:
        return field.decode("utf-8", "surrogateescape")

    try:
        nodes, cwd, flags = text(fields[1]), text(fields[2]), fields[3]
        argc = int(fields[4])
        argv = tuple(map(text, fields[5 : 5 + argc]))
        ncache = int(fields[5 + argc])
        cache = tuple(map(text, fields[6 + argc : 6 + argc + ncache]))
        environ = fields[6 + argc + ncache :]
    except (ValueError, IndexError):
        raise RequestError("a malformed bpsh request") from None
    if len(argv) != argc or len(cache) != ncache:
        raise RequestError("a truncated bpsh request")
    env: dict[str, str] = {}
    for entry in environ:
        name, equals, value = entry.partition(b"=")
        if equals and name:
            env[text(name)] = text(value)
    letters, *valued = text(flags).split(";")
    options: dict[str, str] = {}
    for item in valued:
        key, is_set, setting = item.partition("=")
        if not is_set or key not in ("x", "f", "t") or key in options:
            raise RequestError(f"a bpsh request with an unknown option {item[:40]!r} (another version of bpsh?)")
        options[key] = setting
    try:
        fanout, timeout = int(options.get("f", "0")), float(options.get("t", "0"))
    except ValueError:
        raise RequestError("a malformed bpsh request (--fanout or -t)") from None
    if not (0 <= fanout <= 1 << 20 and 0 <= timeout <= bpsh.MAX_TIMEOUT):  # NaN fails too
        raise RequestError(f"--fanout {fanout} or -t {timeout}: out of range")
    request = p.JobRequest(
        nodes=nodes,
        argv=argv,
        env=env,
        cwd=cwd,
        uid=uid,
        gid=gid,
        cache=cache,
        stdin="n" not in letters,
        groups=groups,
        exclude=options.get("x", ""),
        fanout=fanout,
        timeout=timeout,
    )
    return request, letters


def decode_reattach(data: bytes) -> tuple[str, list[tuple[int, int, int, int]]]:
    """A bpsh reattach record -> (its option letters, [(job id, stdout offset, stderr offset, node)])."""
    fields = data.split(b"\0")
    if len(fields) < 3 or fields[0] != bpsh.REATTACH_MAGIC:
        raise RequestError("not a bpsh reattach request (another version of bpsh?)")
    wanted = []
    for field in fields[2:]:
        parts = field.split(b":")
        if len(parts) != 4 or not all(part.isdigit() and len(part) <= 20 for part in parts):
            raise RequestError(f"a malformed job in a bpsh reattach request: {field[:40]!r}")
        job, stdout, stderr, node = map(int, parts)
        wanted.append((job, stdout, stderr, node))
    if not wanted or len(wanted) > MAX_REATTACH_JOBS:
        raise RequestError(f"a bpsh reattach request names {len(wanted)} jobs: 1 to {MAX_REATTACH_JOBS} expected")
    return fields[1].decode("ascii", "replace"), wanted


class LinePrefixer:
    """bpsh -p: whole lines only, each led by its node's number, so the output of many nodes interleaves
    by line and says where it came from."""

    def __init__(self) -> None:
        self._partial: dict[tuple[int, int], bytes] = {}
        self._begun: set[tuple[int, int]] = set()  # lines too long to hold, whose start is written

    def lines(self, node: int, stream: int, data: bytes) -> bytes:
        key = (node, stream)
        text = self._partial.pop(key, b"") + data
        complete, newline, partial = text.rpartition(b"\n")
        lead = b"%d: " % node
        written = b""
        if newline:
            written = b"".join(lead + line + b"\n" for line in complete.split(b"\n"))
            if key in self._begun:  # the first line's start, and its lead, went out already
                written = written[len(lead) :]
                self._begun.discard(key)
        if len(partial) > PARTIAL_LINE_MAX:
            # output with no newline (a progress bar, binary data): holding it all would cost memory without
            # bound and time quadratic in its length; the rest of the line follows without a lead
            written += partial if key in self._begun else lead + partial
            self._begun.add(key)
        elif partial:
            self._partial[key] = partial
        return written

    def holding(self, node: int, stream: int) -> int:
        """Bytes of a partial line held for its newline."""
        return len(self._partial.get((node, stream), b""))

    def rest(self, node: int, stream: int) -> bytes:
        """The last line of a job that ended without a newline."""
        partial = self._partial.pop((node, stream), b"")
        if (node, stream) in self._begun:
            self._begun.discard((node, stream))
            return partial + b"\n"
        return b"%d: %s\n" % (node, partial) if partial else b""


class LocalSession(Session):
    """One bpsh client: its socket and its three file descriptors."""

    def __init__(
        self,
        hub: JobHub,
        loop: asyncio.AbstractEventLoop,
        conn: socket.socket,
        fds: list[int],
        *,
        prefix: bool = False,
        sequential: SequentialOutput | None = None,
        folded: FoldedOutput | None = None,
        client_pid: int = 0,
    ) -> None:
        super().__init__()
        self.hub, self.loop, self.conn = hub, loop, conn
        self.client_pid = client_pid  # bpsh's, from SO_PEERCRED: 0 if unknown
        self.folded = folded  # bpsh -b: standard output held and folded; standard error led by its node
        self.prefixes = LinePrefixer() if prefix or folded is not None else None
        self.sequential = sequential  # bpsh -s / -d
        self._turn_came: asyncio.Event | None = None  # set when a node's held output was written (-s)
        self.stdin_fd, self.stdout_fd, self.stderr_fd = fds
        self.statuses: list[int] = []
        self._writes: queue.SimpleQueue[Queued | None] | None = None
        self._queued = 0  # output bytes handed to the writer and not yet written
        self._queued_lock = threading.Lock()
        self._drained: asyncio.Event | None = None  # set when the writer got below QUEUE_LOW
        self._stdin_chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._stdin_ahead = 0  # chunks read and not yet sent to the nodes
        self._stdin_room = threading.Semaphore(STDIN_AHEAD)  # the same bound for the thread reading a file
        self._stdin_polled = self._stdin_paused = self._stdin_done = self._stdin_watched = False
        self._closed = False
        self._stopped = False  # by Ctrl-Z, until a SIGCONT

    # --- from the hub -------------------------------------------------------------------------------------

    def starting(self, nodes: list[int]) -> None:
        if self.sequential is not None:
            self._write_chunks(self.sequential.start(nodes))

    def job_added(self, job: int, node: int) -> None:
        self._send_record(b"J" + job.to_bytes(8, "big") + b"%d" % node, None)  # bpsh keeps its jobs' ids

    def output(self, stream: int, data: bytes, node: int, job: int = 0, end: int = 0) -> None:
        if self.folded is not None and stream == p.Stream.STDOUT:
            self._write_chunks(self.folded.output(node, data, self._stdout_lines))
            if job:
                self._folded_taken(job, end)
            return
        if self.prefixes is not None:
            data = self.prefixes.lines(node, stream, data)
            end -= self.prefixes.holding(node, stream)  # a partial line comes again, whole, after a restart
        if data:
            self._output_unprefixed(stream, marked(data, (job, stream, end) if job else None), node)

    def _folded_taken(self, job: int, end: int) -> None:
        """-b holds standard output here until every node has ended, so bpsh gets only where the job's
        stream reached (a record without data): its node may then forget it, as for output bpsh wrote (a
        job with more than the node's window, 1 MiB, would block for good otherwise), and a bpsh that
        reattaches after a restart asks for what came after. What -b held dies with its beoserv (README)."""
        self._send_record(output_head(p.Stream.STDOUT, job, end), (job, p.Stream.STDOUT, end))

    def _stdout_lines(self, node: int, data: bytes) -> bytes:
        assert self.prefixes is not None  # set with -b
        return self.prefixes.lines(node, p.Stream.STDOUT, data)

    def job_exit(self, message: p.JobExit) -> None:
        self.statuses.append(message.status)
        if self.folded is not None:
            self.folded.ended(message.node, message.status)
        if self.prefixes is not None:
            for stream in (p.Stream.STDOUT, p.Stream.STDERR):
                if rest := self.prefixes.rest(message.node, stream):
                    self._output_unprefixed(stream, rest, message.node)
        if message.error:
            where = f"node {message.node}: " if message.node >= 0 else ""
            self._output_unprefixed(
                p.Stream.STDERR, f"bpsh: {where}{message.error}\n".encode(errors="replace"), message.node
            )
        if self.sequential is not None:
            self._write_chunks(self.sequential.ended(message.node))
            if self._turn_came is not None:
                self._turn_came.set()
                self._turn_came = None
        if message.job:  # after the job's output: bpsh counts its status, then the node may forget it
            self._send_record(b"E" + message.job.to_bytes(8, "big") + b"%d" % message.status, message.job)

    def _output_unprefixed(self, stream: int, data: bytes, node: int) -> None:
        """Output already in lines (-p) or needing none: written now, or held for its turn (-s)."""
        if self.sequential is not None:
            self._write_chunks(self.sequential.output(node, stream, data))
        else:
            self._write(stream, data)

    def _write_chunks(self, chunks: list[tuple[int, bytes]]) -> None:
        for stream, data in chunks:
            self._write(stream, data)

    def all_ended(self) -> None:
        if self.folded is not None:
            self._write_chunks(self.folded.render())
        self._stop_stdin()
        self._stdin_chunks.put_nowait(b"")  # wakes forward_stdin, if it waits
        status = max(self.statuses) if self.statuses else bpsh.NO_EXIT
        if self._writes is None:
            self._send_status(status)
        else:
            self._writes.put((b"X%d" % status, b"", None))  # after the output: the client exits on it
            self._writes.put(None)

    # --- output -------------------------------------------------------------------------------------------

    def congested(self, node: int) -> bool:
        """More than QUEUE_HIGH bytes of output wait for a slow reader (`bpsh 0 cat big | less`), or, with
        -s, the nodes before this one have not ended: the hub then holds the job's output on its node
        (p.JobFlow), where the job blocks on its pipe, instead of beoserv holding it all in memory."""
        if self.sequential is not None and self.sequential.must_wait(node, QUEUE_HIGH):
            return True
        with self._queued_lock:
            return self._queued > QUEUE_HIGH

    async def backpressure(self, node: int) -> None:
        """Return once the session can take more of `node`'s output (see congested)."""
        while self.sequential is not None and self.sequential.must_wait(node, QUEUE_HIGH):
            if self._turn_came is None:
                self._turn_came = asyncio.Event()
            await self._turn_came.wait()
        with self._queued_lock:
            if self._queued <= QUEUE_HIGH:
                return
            if self._drained is None:  # one event for every node waiting: a second must not orphan the first's
                self._drained = asyncio.Event()
            drained = self._drained
        await drained.wait()

    def _write(self, stream: int, data: bytes) -> None:
        """Output for bpsh's stdout or stderr, in records small enough for its socket."""
        mark = getattr(data, "mark", None)
        for start in range(0, len(data), RECORD_DATA_MAX):
            piece = data[start : start + RECORD_DATA_MAX]
            after = len(data) - start - len(piece)
            job = end = 0
            # a piece of the job's bytes as they came ends at a known offset; of prefixed lines, only the last
            if mark is not None and (after == 0 or self.prefixes is None):
                job, end = mark[0], mark[2] - after
            self._send_record(output_head(stream, job, end), (job, stream, end) if job else None, piece)

    def _send_record(self, record: bytes, then: object, data: bytes = b"") -> None:
        """Queue a record for bpsh (its head, and output data if any); `then` is what its delivery means: an
        output mark (job, stream, end), or a job id whose exit it carries."""
        if self._writes is None and not data and not isinstance(then, tuple) and self._send_now(record, then):
            return
        if self._writes is None:
            self._writes = queue.SimpleQueue()
            threading.Thread(target=self._writer, name="bpsh-output", daemon=True).start()
        with self._queued_lock:
            self._queued += len(record) + len(data)
        self._writes.put((record, data, then))

    def _send_now(self, record: bytes, then: object) -> bool:
        """A small record (a job's id, its exit) sent from the loop while no output has come: a job that
        writes nothing (`bpsh 0 true`) starts no writer thread, which would cost it a tenth of a millisecond.
        False if the socket is full: the writer sends it."""
        try:
            self.conn.send(record)
        except BlockingIOError:
            return False
        except OSError:
            pass  # bpsh is gone: nothing more will reach it, and its jobs' exits count as delivered
        if isinstance(then, int):
            self.hub.exit_delivered(then)
        return True

    def _written(self, size: int) -> None:
        """In the writer thread."""
        with self._queued_lock:
            self._queued -= size
            if self._drained is not None and self._queued < QUEUE_LOW:
                self.loop.call_soon_threadsafe(self._drained.set)
                self._drained = None

    def _writer(self) -> None:
        """Send the records in order. A bpsh gone (killed, its terminal closed) takes nothing more; its
        jobs' output counts as delivered, so that their nodes forget it and the jobs, hung up, never block."""
        assert self._writes is not None
        broken = False
        delivered: dict[int, list[int]] = {}  # job -> [stdout, stderr, bytes since the last ack]
        queued = self._writes
        held: Queued | None = None  # an item taken while joining records, sent next
        while True:
            item, held = (held, None) if held is not None else (queued.get(), None)
            if item is None:
                break
            head, data, then = item
            parts, size = [head, data], len(data)
            if isinstance(then, tuple):  # output: join what follows of the same job and stream (many short
                while size < RECORD_DATA_MAX:  # lines are one record, one recv and one write for bpsh)
                    try:
                        following = queued.get_nowait()
                    except Empty:
                        break
                    if following is None or not _joins(then, following, size):
                        held = following if following is not None else (b"", b"", _END)
                        break
                    parts.append(following[1])
                    size += len(following[1])
                    then = following[2]
                if len(parts) > 2:
                    last = cast(tuple[int, int, int], then)
                    parts[0] = output_head(last[1], last[0], last[2])
            if then is _END:
                break
            if head and not broken:
                broken = not self._send_whole(parts)
            if isinstance(then, tuple):
                job, stream, end = then
                offsets = delivered.setdefault(job, [0, 0, 0])
                offsets[2] += max(0, end - offsets[stream - 1])
                offsets[stream - 1] = max(offsets[stream - 1], end)
                if offsets[2] >= ACK_EVERY:
                    offsets[2] = 0
                    self.loop.call_soon_threadsafe(self.hub.delivered, job, offsets[0], offsets[1])
            elif isinstance(then, int):
                delivered.pop(then, None)
                self.loop.call_soon_threadsafe(self.hub.exit_delivered, then)
            self._written(sum(map(len, parts)) + (len(parts) - 2) * OUTPUT_RECORD_HEADER)
        self.loop.call_soon_threadsafe(self._close_output)

    def _send_whole(self, parts: list[bytes]) -> bool:
        """One record to bpsh, from its parts (no copy to join them), waiting while its socket is full;
        False if bpsh is gone."""
        room = None
        while True:
            try:
                self.conn.sendmsg(parts)
                return True
            except BlockingIOError:
                if room is None:
                    room = select.poll()  # not select(): beoserv's descriptors go far past FD_SETSIZE
                    room.register(self.conn, select.POLLOUT)
                room.poll(SEND_POLL * 1000)
            except OSError:
                return False

    def _send_status(self, status: int) -> None:
        """The last word, when no output ever came (a refused request): from the loop, not the writer."""
        try:
            self.conn.send(b"X%d" % status)
        except OSError:
            pass
        self._close_output()

    def _close_output(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.conn.fileno())
        self.conn.close()
        for fd in (self.stdout_fd, self.stderr_fd, self.stdin_fd):
            os.close(fd)

    def _signal_jobs(self, signum: int) -> None:
        asyncio.ensure_future(self.hub.signal(self, signum))

    # --- from the client ----------------------------------------------------------------------------------

    def listen(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self._from_client)

    def _from_client(self) -> None:
        try:
            data = self.conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # bpsh was killed, or its user closed the terminal
            self.loop.remove_reader(self.conn.fileno())
            self._stop_stdin()
            asyncio.ensure_future(self.hub.hang_up(self))
            return
        if data[:1] == b"P":  # bpsh's stdout is a closed pipe: the jobs get SIGPIPE, as at a shell
            self._signal_jobs(signal.SIGPIPE)
        elif data[:1] == b"S" and data[1:].isdigit():
            signum = int(data[1:])
            if signum == signal.SIGSTOP:  # Ctrl-Z: a stopped bpsh reads nothing, so neither does beoserv for it
                self._stopped = True
                self._pause_stdin(True)
            elif signum == signal.SIGCONT:  # `fg`, or `bg`, after which bpsh may no longer read its terminal
                self._stopped = False
                self._follow_foreground()
            self._signal_jobs(signum)

    # --- stdin --------------------------------------------------------------------------------------------

    async def forward_stdin(self) -> None:
        """After the jobs started: read stdin and give every chunk to every job, until end of file."""
        try:
            self.loop.add_reader(self.stdin_fd, self._stdin_readable)
            self._stdin_polled = self._stdin_watched = True
            self._follow_foreground()  # `bpsh 0 cat &` at a prompt: the terminal is the shell's until `fg`
        except PermissionError:  # epoll refuses regular files: they never block, a thread reads them
            threading.Thread(target=self._read_file_stdin, name="bpsh-stdin", daemon=True).start()
        while self.jobs:
            chunk = await self._stdin_chunks.get()
            await self.hub.stdin(self, chunk)  # waits while the node links' buffers are full
            if not chunk:
                break
            self._stdin_sent()

    def _stdin_readable(self) -> None:
        try:
            chunk = os.read(self.stdin_fd, READ_SIZE)  # readable: one read does not block
        except BlockingIOError:
            return
        except OSError:  # EIO: a terminal beoserv may not read (it is in the background of that terminal)
            chunk = b""
        if not chunk:
            self._stop_stdin()
        self._queue_stdin(chunk)

    def _read_file_stdin(self) -> None:
        while True:
            self._stdin_room.acquire()  # released as the nodes take a chunk, and when stdin is done
            if self._stdin_done:
                break
            try:
                chunk = os.read(self.stdin_fd, READ_SIZE)
            except OSError:
                chunk = b""
            self.loop.call_soon_threadsafe(self._queue_stdin, chunk)
            if not chunk:
                break

    def _queue_stdin(self, chunk: bytes) -> None:
        self._stdin_chunks.put_nowait(chunk)
        if chunk:
            self._stdin_ahead += 1
            self._watch_stdin()

    def _stdin_sent(self) -> None:
        """A chunk went to the nodes: room to read another."""
        self._stdin_ahead -= 1
        if self._stdin_polled:
            self._watch_stdin()
        else:
            self._stdin_room.release()

    def _watch_stdin(self) -> None:
        """Poll stdin while it is wanted: not at its end, not stopped (Ctrl-Z), not too far ahead of the nodes."""
        wanted = (
            self._stdin_polled and not self._stdin_done and not self._stdin_paused and self._stdin_ahead < STDIN_AHEAD
        )
        if wanted == self._stdin_watched:
            return
        self._stdin_watched = wanted
        if wanted:
            self.loop.add_reader(self.stdin_fd, self._stdin_readable)
        else:
            self.loop.remove_reader(self.stdin_fd)

    def _client_in_foreground(self) -> bool:
        """Whether bpsh could read its stdin itself: not when that is its controlling terminal and the
        terminal's foreground is another process group (the shell's, after `bg`), where a read would stop
        bpsh (SIGTTIN); beoserv, which reads for it, would take what the user types at the prompt. Read from
        /proc/PID/stat (pgrp, tty_nr, tpgid): tcgetpgrp() answers only for beoserv's own terminal."""
        if self.client_pid <= 0 or not os.isatty(self.stdin_fd):
            return True
        try:
            with open(f"/proc/{self.client_pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            pgrp, tty_nr, foreground = int(fields[2]), int(fields[4]), int(fields[5])
            if tty_nr != os.fstat(self.stdin_fd).st_rdev:
                return True  # its stdin is some other terminal, whose foreground is not its business
        except (OSError, ValueError, IndexError):  # bpsh ended meanwhile
            return True
        return foreground == pgrp

    def _follow_foreground(self) -> None:
        """Forward stdin while bpsh is in its terminal's foreground. A later `fg` of a job already running
        (after `bg`) sends it no signal, only the terminal: so while in the background, look again."""
        background = not self._client_in_foreground()
        self._pause_stdin(background)
        if background and not self._stdin_done:
            self.loop.call_later(FOREGROUND_POLL, self._recheck_foreground)

    def _recheck_foreground(self) -> None:
        if self._stdin_paused and not self._stopped and not self._closed:  # not resumed, nor stopped again
            self._follow_foreground()

    def _pause_stdin(self, pause: bool) -> None:
        self._stdin_paused = pause
        self._watch_stdin()

    def _stop_stdin(self) -> None:
        self._stdin_done = True
        self._watch_stdin()  # before anything closes the fd: epoll watches the open file, which bpsh still has open
        self._stdin_room.release()  # the thread reading a file, if it waits for room: to end


class LocalListener:
    """The listening socket (SOCK_SEQPACKET, mode 0666: the kernel says who connects)."""

    def __init__(self, hub: JobHub, path: Path) -> None:
        self.hub, self.path = hub, path
        self.sock: socket.socket | None = None
        self._inode = 0

    def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _someone_listens(self.path):
                raise BeobootError(
                    f"another beoserv listens on {self.path}", hint="stop it, or give this one --bpsh-socket OTHER_PATH"
                )
            self.path.unlink()  # left by a beoserv that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise BeobootError(
                f"cannot create the bpsh socket {self.path}: {exc.strerror}",
                hint="pass --bpsh-socket PATH in a writable directory",
            ) from None
        os.chmod(self.path, 0o666)
        self._inode = os.stat(self.path).st_ino
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        log.info("bpsh socket %s", self.path)

    def reopen(self) -> None:
        """SIGHUP: a new listening socket at the path, put in place by a rename, so that a bpsh never finds
        none; the old one closes, and with it no session (each has its own connection)."""
        if self.sock is None:
            return
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fresh.unlink(missing_ok=True)
            sock.bind(str(fresh))
            os.chmod(fresh, 0o666)
            sock.listen(128)
            os.rename(fresh, self.path)
        except OSError as exc:
            sock.close()
            fresh.unlink(missing_ok=True)
            raise BeobootError(f"cannot make the bpsh socket {self.path} again: {exc.strerror or exc}") from None
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock, self._inode = sock, os.stat(self.path).st_ino
        loop.add_reader(sock.fileno(), self._accept)
        log.info("bpsh socket %s reopened", self.path)

    def close(self) -> None:
        if self.sock is None:
            return
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        try:
            if os.stat(self.path).st_ino == self._inode:  # not a newer beoserv's
                self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                log.warning("bpsh connection refused: %s", exc)
            return
        conn.setblocking(False)
        if not self._first_message(conn):  # the request usually came with the connection: no loop turn
            asyncio.get_running_loop().add_reader(conn.fileno(), self._first_message, conn)

    def _first_message(self, conn: socket.socket) -> bool:
        """Take the request; False if it has not arrived yet."""
        loop = asyncio.get_running_loop()
        try:
            data, fds, flags, _ = socket.recv_fds(conn, bpsh.MAX_REQUEST, 3)
        except BlockingIOError:
            return False
        except OSError:
            data, fds, flags = b"", [], 0
        loop.remove_reader(conn.fileno())
        self._take(conn, data, fds, flags)
        return True

    def _take(self, conn: socket.socket, data: bytes, fds: list[int], flags: int) -> None:
        loop = asyncio.get_running_loop()
        if len(fds) != 3 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        pid, uid, gid = PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size))
        if data.startswith(bpctl.REQUEST_MAGIC + b"\0"):
            asyncio.ensure_future(self._control(conn, fds, data, uid))
            return
        if data.startswith(bpsh.REATTACH_MAGIC + b"\0"):
            self._reattach(conn, fds, data, uid, pid)
            return
        try:
            request, letters = decode_request(data, uid, gid, peer_groups(conn, pid, uid))
        except RequestError as exc:
            _say(fds[2], f"bpsh: {exc}\n")
            _answer(conn, fds, USAGE_STATUS)
            return
        request = replace(request, client_pid=pid)
        st = os.fstat(fds[0])
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == DEV_NULL:
            request = replace(request, stdin=False)  # the jobs get end of file at once, no reading needed
        sequential = SequentialOutput(divider="d" in letters) if "s" in letters or "d" in letters else None
        folded = FoldedOutput(self.hub.config.hostname_prefix) if "b" in letters else None
        session = LocalSession(
            self.hub, loop, conn, fds, prefix="p" in letters, sequential=sequential, folded=folded, client_pid=pid
        )
        session.listen()
        asyncio.ensure_future(self._run(session, request))

    def _reattach(self, conn: socket.socket, fds: list[int], data: bytes, uid: int, pid: int) -> None:
        """A bpsh whose beoserv went away, back for its jobs: only its own (the kernel says whose it is)."""
        try:
            letters, wanted = decode_reattach(data)
        except RequestError as exc:
            _say(fds[2], f"bpsh: {exc}\n")
            _answer(conn, fds, USAGE_STATUS)
            return
        session = LocalSession(self.hub, asyncio.get_running_loop(), conn, fds, prefix="p" in letters, client_pid=pid)
        session.listen()
        self.hub.reattach(session, uid, wanted)
        st = os.fstat(fds[0])
        if "n" not in letters and session.jobs and not (stat.S_ISCHR(st.st_mode) and st.st_rdev == DEV_NULL):
            asyncio.ensure_future(session.forward_stdin())

    async def _run(self, session: LocalSession, request: p.JobRequest) -> None:
        await self.hub.run(session, request)
        if request.stdin and session.stdin_open and session.jobs:
            await session.forward_stdin()

    async def _control(self, conn: socket.socket, fds: list[int], data: bytes, uid: int) -> None:
        """bpctl: root only; one line on the client's stderr per node that did not act."""
        status = bpctl.FAILED_STATUS
        try:
            nodes, action, grace, exclude = bpctl.decode_request(data)
            if uid != 0:
                raise bpctl.ControlRequestError(f"only root may {action} nodes (you are uid {uid})")
            order = p.NodePower(action, grace, by="root")
            failures = await self.hub.power(order, nodes, exclude)
            for failure in failures:
                _say(fds[2], f"bpctl: {failure}\n")
            status = bpctl.FAILED_STATUS if failures else 0
        except (bpctl.ControlRequestError, BeobootError) as exc:
            _say(fds[2], f"bpctl: {exc}\n")
        finally:
            _answer(conn, fds, status)


def _answer(conn: socket.socket, fds: list[int], status: int) -> None:
    """The last word to a client that gets no session: its status; then its descriptors go."""
    try:
        conn.send(b"X%d" % status)
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    conn.close()


def _someone_listens(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode(errors="replace"))
    except OSError:
        pass
