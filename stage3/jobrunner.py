"""The node's job runner: takes jobs from the master, caches their files, runs them in the environment root."""

# The node opens one WebSocket to the master (agent.protocol.JOBS_LINK_PATH) and keeps it open, reconnecting
# with backoff; the master pushes JobStart frames down it, with stdin and signals, and the node sends output,
# JobStarted and JobExit back. Nothing listens on the node.
#
# Per job: fetch the missing objects (stage3.libcache), hold them, link the job's paths into the environment
# root, and have stage3.launcher start it: its own session (so a signal reaches the whole job, `sh -c` and its
# children), chrooted into the environment root, with the job's gid and uid. This side pumps stdout and
# stderr to the master until both close, then sends the exit status the launcher collected. The jobs are the
# launcher's children, so PID 1's SIGCHLD reaper never takes a job's status.
#
# A job outlives its link. Its output is kept (stage3.outputlog, bounded: past it the job blocks on its
# pipe) until the master acknowledges it, and its exit until the master acknowledges that; when the link
# breaks the job runs on, and the next link (to the same beoserv, or a restarted one) opens with a JobReport
# of every job held. The master answers each with a JobResume from the offsets its bpsh has, and the node
# sends the rest, then the exit.

from __future__ import annotations

import itertools
import os
import queue
import random
import selectors
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from agent import protocol as p
from stage3.accounts import AccountError, Accounts
from stage3.launcher import Launcher, LaunchError
from stage3.libcache import LIBCACHE_DIR, LibCache, LibCacheError
from stage3.outputlog import OutputLog
from stage3.wsclient import OP_TEXT, WebSocket, WebSocketError

EVERYTHING = 1 << 62  # an offset past any output: the master forgets a job's output with it (JobResume)
EXEC_FAILED = 127  # what a shell answers for a command it could not run
READ_SIZE = 65536
KILLED_WAIT = 5.0  # after SIGKILL: how long the exits of the killed jobs may take to reach the master
# The launcher's ids for jobs: the master's ids are the master's (a master that lost its registry starts
# them from 1 again); one count for the process, since Launcher.shared gives every runner on a root (a
# simnode's reboot makes a new one) the same launcher.
_local_ids = itertools.count(1)


@dataclass
class JobSlot:
    job: int  # the master's id, for the frames of the link that started it
    local_id: int = field(default_factory=lambda: next(_local_ids))  # its id with the launcher
    stdin: queue.Queue[bytes] = field(default_factory=queue.Queue)
    pid: int = 0  # the job's process group, once the launcher said; 0 before and after
    ended: bool = False
    pending: list[int] = field(default_factory=list)  # signals that came before the pid
    lock: threading.Lock = field(default_factory=threading.Lock)
    # set while the master takes the job's output (p.JobFlow): cleared, the pump waits and the job blocks on
    # its pipe; set again whenever the link goes, so that the output goes into the log until it is full
    flowing: threading.Event = field(default_factory=threading.Event)
    output: OutputLog = field(default_factory=OutputLog)
    # the link the job's frames go to; None while there is none, or a new link has not resumed the job yet
    ws: WebSocket | None = None
    exit: p.JobExit | None = None  # its end, kept until the master acknowledges it (p.JobAck exit)
    uid: int = -1  # the manifest's, for the report a new link opens with
    command: str = ""
    # held across deciding where a frame goes and sending it: a resend and the pump's next chunk never cross
    wire: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.flowing.set()

    def held(self) -> p.JobHeld:
        stdout, stderr = self.output.next[1], self.output.next[2]
        return p.JobHeld(self.job, self.pid, stdout, stderr, self.exit is not None, self.uid, self.command)

    def signal(self, signum: int) -> None:
        """Signal the job now, or as soon as it starts: a Ctrl-C or a hang-up while its files are still
        being fetched must end it, not be dropped and leave it to run."""
        with self.lock:
            if self.ended:
                return
            if not self.pid:
                self.pending.append(signum)
                return
            pid = self.pid
        _killpg(pid, signum)

    def start(self, pid: int) -> None:
        """The job runs: deliver what came before, in order."""
        with self.lock:
            self.pid, pending, self.pending = pid, self.pending, []
        for signum in pending:
            _killpg(pid, signum)

    def end(self) -> None:
        with self.lock:
            self.pid, self.ended = 0, True


class Workers:
    """Threads for jobs, kept when idle: starting a thread per job cost a cached job a tenth of a
    millisecond. Unbounded, like the jobs: a job holds its worker for as long as it runs."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, function: Callable[..., None], *args: object) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._tasks.put((function, args))
        if spawn:
            threading.Thread(target=self._work, name="job", daemon=True).start()

    def _work(self) -> None:
        while True:
            function, args = self._tasks.get()
            try:
                function(*args)
            except Exception:  # a bug met by one job must not take the thread, counted idle, with it
                traceback.print_exc(file=sys.stderr)
            with self._lock:
                self._idle += 1


def output_frame(stream: int, job: int, offset: int, data: bytes) -> bytes:
    return struct.pack(p.OUTPUT_HEADER, stream, job, offset) + data


class JobRunner:
    def __init__(
        self,
        master_url: str,
        mac: str,
        env_root: str,
        cache: LibCache,
        *,
        log: Callable[[str], None] = lambda message: None,
        launcher: Launcher | None = None,
        token: Callable[[], str] = lambda: "",
        power: Callable[[p.NodePower], None] | None = None,
    ) -> None:
        self.master_url = master_url.rstrip("/")
        self.mac = p.normalise_mac(mac)
        self.token = token  # the link token of the node's latest registration, read at every (re)connect
        self.env_root = env_root
        self.cache = cache
        self.accounts = Accounts(env_root)
        self.log = log
        self.launcher = launcher
        self.power = power  # called (in a worker) once the jobs have ended: closes the link, then acts
        self._going_down: p.PowerAction | None = None
        self._slots: dict[int, JobSlot] = {}  # the current link's jobs, by the master's id
        self._running: dict[int, JobSlot] = {}  # every job on the node, whichever link started it, by local id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ws: WebSocket | None = None
        self.connected = threading.Event()
        self._workers = Workers()

    # --- the link -----------------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._link_forever, name="jobs", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        if self._ws is not None:
            self._ws.close()

    def _link_forever(self) -> None:
        self._live_launcher()  # now, not at the first job, which would wait for it
        url = f"{self.master_url}{p.JOBS_LINK_PATH}?mac={quote(self.mac)}"
        failures = 0
        while not self._stop.is_set():
            try:
                self._ws = WebSocket.connect(url, headers={p.LINK_TOKEN_HEADER: self.token()})
            except WebSocketError as exc:
                failures += 1
                wait = min(30.0, 0.25 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                if failures in (1, 5) or failures % 20 == 0:
                    self.log(f"beoboot: job link to {self.master_url}: {exc}; retrying")
                self._stop.wait(wait)
                continue
            failures = 0
            self.connected.set()
            try:
                self._report(self._ws)
                self._serve(self._ws)
            except WebSocketError:
                pass
            except (p.ProtocolError, struct.error) as exc:  # what no master sends: its next frame is not trusted
                self.log(f"beoboot: job link to {self.master_url} closed: a frame it sent is not valid: {exc}")
                self._ws.close()
            self.connected.clear()
            self._detach_all()
            if not self._stop.is_set():
                self.log(f"beoboot: job link to {self.master_url} lost; reconnecting")
                self._stop.wait(0.2)

    def _serve(self, ws: WebSocket) -> None:
        while True:
            opcode, payload = ws.recv()
            if opcode == OP_TEXT:
                self._control(ws, p.decode_frame(payload))
                continue
            stream, job = struct.unpack_from(p.IO_HEADER, payload)
            slot = self._slots.get(job)
            if slot is not None and stream == p.Stream.STDIN:
                slot.stdin.put(payload[p.IO_HEADER_SIZE :])

    def _report(self, ws: WebSocket) -> None:
        """A new link's first frame: the jobs this node holds, for the master to take back."""
        with self._lock:
            held = tuple(slot.held() for slot in self._slots.values())
        if held:
            self.log(f"beoboot: job link up: {len(held)} jobs held for the master to take back")
        ws.send_text(p.encode_frame(p.JobReport(held)))

    def _control(self, ws: WebSocket, message: object) -> None:
        if isinstance(message, p.JobStart):
            if self._going_down is not None:
                refused = f"the node is going down ({self._going_down})"
                slot = JobSlot(message.job, ws=ws)
                with self._lock:
                    self._slots[message.job] = slot  # its exit is kept until acknowledged, as any job's
                self._send_exit(slot, p.JobExit(message.job, EXEC_FAILED, error=refused))
                return
            argv = message.manifest.argv
            slot = JobSlot(message.job, ws=ws, uid=message.manifest.uid, command=" ".join(argv))
            with self._lock:
                self._slots[message.job] = slot
                self._running[slot.local_id] = slot
            self._workers.submit(self._run, slot, message.manifest)
        elif isinstance(message, p.JobSignal):
            signalled = self._slots.get(message.job)
            if signalled is not None:
                signalled.signal(message.signum)
        elif isinstance(message, p.JobFlow):
            paced = self._slots.get(message.job)
            if paced is not None:
                paced.flowing.set() if message.flowing else paced.flowing.clear()
        elif isinstance(message, p.JobAck):
            acked = self._slots.get(message.job)
            if acked is not None:
                acked.output.ack(message.stdout, message.stderr)
                if message.exit and acked.exit is not None:
                    self._forget(acked)
        elif isinstance(message, p.JobResume):
            resumed = self._slots.get(message.job)
            if resumed is not None:
                self._resume(ws, resumed, message)
        elif isinstance(message, p.NodePower) and self._going_down is None:
            self._going_down = message.action
            self._workers.submit(self._power, message)

    def _power(self, order: p.NodePower) -> None:
        """bpctl: the jobs end first, as on a shutdown, and their exits reach their bpsh; then the owner
        (stage3.supervisor, stage3.simnode) stops the heartbeats, closes the link and acts."""
        self.log(f"beoboot: {order.by or 'the master'} asked for {order.action}: ending {len(self._running)} jobs")
        killed = self.end_jobs(order.grace)
        if killed:
            self.log(f"beoboot: {killed} jobs did not end within {order.grace:g} s of SIGTERM: killed")
        if self.power is None:
            self.log(f"beoboot: this node cannot {order.action}; closing its job link")
            self.stop()
        else:
            self.power(order)

    def end_jobs(self, grace: float) -> int:
        """SIGTERM (and SIGCONT, for a stopped job) to every job, SIGKILL to those left after `grace`
        seconds; returns how many had to be killed. A job still fetching its files gets them when it starts."""
        if not self._signal_all((signal.SIGTERM, signal.SIGCONT), grace):
            return 0
        with self._lock:
            left = len(self._running)
        self._signal_all((signal.SIGKILL,), KILLED_WAIT)
        return left

    def _signal_all(self, signals: tuple[int, ...], wait: float) -> bool:
        """Send `signals` to every job, wait up to `wait` s for them all to end; True if some are left."""
        with self._lock:
            slots = list(self._running.values())
        for slot in slots:
            for signum in signals:
                slot.signal(signum)
            if signal.SIGKILL in signals:
                slot.flowing.set()  # the node goes down: what the killed jobs wrote drains, paced or not
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return False
            time.sleep(0.05)
        with self._lock:
            return bool(self._running)

    def _detach_all(self) -> None:
        """The link is gone, not the jobs' bpsh: a beoserv restart or a network break must end no job. Each
        runs on, its output kept until a new link resumes it (up to its log's bound, then it blocks)."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            with slot.wire:
                slot.ws = None
            slot.flowing.set()  # the master that paused it is gone; the log bounds what is read now

    def _resume(self, ws: WebSocket, slot: JobSlot, resume: p.JobResume) -> None:
        """Send the job's output from the master's offsets on, then its exit if it ended; later output goes
        to this link as it comes."""
        again = 0
        with slot.wire:
            was = slot.ws
            slot.ws = ws
            slot.flowing.set()
            for stream, offset, data in slot.output.since(resume.stdout, resume.stderr):
                _send_output(ws, stream, slot.job, offset, data)
                again += len(data)
            if slot.exit is not None:
                _send_frame(ws, slot.exit)
        if was is not ws and resume.stdout < EVERYTHING:  # a job taken back (not one asked again, or let go)
            self.log(f"beoboot: job {slot.job} resumed on a new link: {again} bytes of output it held sent")

    def forget_all(self) -> None:
        """The node goes down without its master (master_lost): no one will take what the jobs left, and
        their pumps must not wait for room in their logs."""
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            slot.output.release()

    def _forget(self, slot: JobSlot) -> None:
        """The master has the job's end: nothing of it is kept any longer."""
        slot.output.release()
        with self._lock:
            if self._slots.get(slot.job) is slot:
                del self._slots[slot.job]

    # --- one job ------------------------------------------------------------------------------------------

    def _run(self, slot: JobSlot, manifest: p.JobManifest) -> None:
        held: list[str] = []
        try:
            try:
                fetched, held = self.cache.ensure_held(manifest.files)
                self.cache.materialise(manifest.files)
            except (LibCacheError, OSError) as exc:
                self._send_exit(slot, p.JobExit(slot.job, EXEC_FAILED, error=f"cannot cache the job's files: {exc}"))
                return
            try:
                self.accounts.ensure(manifest.passwd_entry, manifest.group_entries)
            except (AccountError, OSError) as exc:
                self._send_exit(slot, p.JobExit(slot.job, EXEC_FAILED, error=f"cannot name the job's user: {exc}"))
                return
            self._execute(slot, manifest, fetched)
        finally:
            with self._lock:  # in _slots still, until the master acknowledges its exit
                self._running.pop(slot.local_id, None)
            slot.stdin.put(b"")
            if held:
                self.cache.release(held)

    def _execute(self, slot: JobSlot, manifest: p.JobManifest, fetched: int) -> None:
        launcher = self._live_launcher()
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        spec = {
            "executable": manifest.executable,
            "argv": list(manifest.argv),
            "env": manifest.env,
            "cwd": manifest.cwd,
            "uid": manifest.uid,
            "gid": manifest.gid,
            "groups": list(manifest.groups),
        }  # the launcher is in the root already

        def started(pid: int) -> None:  # in the launcher's reply thread
            slot.start(pid)  # before the frame: a link opened meanwhile reports the pid
            with slot.wire:
                if slot.ws is not None:
                    _send_frame(slot.ws, p.JobStarted(slot.job, pid, fetched=fetched))

        try:
            launcher.start(slot.local_id, spec, (stdin_r, out_w, err_w), started)
        except LaunchError as exc:
            for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            self._send_exit(slot, p.JobExit(slot.job, EXEC_FAILED, error=str(exc)))
            return
        for fd in (stdin_r, out_w, err_w):
            os.close(fd)
        _start_stdin(slot.stdin, stdin_w)
        self._pump(slot, out_r, err_r)
        wait_status, error = launcher.wait(slot.local_id)
        status, signum = p.shell_status(wait_status)
        slot.end()
        self._send_exit(slot, p.JobExit(slot.job, status, signum, error=error))

    def _live_launcher(self) -> Launcher:
        """The launcher, or a new one if its helper died (a root job's `kill -9 -1`, the OOM killer): the
        dead one would fail every later job until the node reboots."""
        launcher = self.launcher
        if launcher is None or not launcher.alive():
            launcher = self.launcher = Launcher.shared(self.env_root)
        return launcher

    def _pump(self, slot: JobSlot, out_r: int, err_r: int) -> None:
        job = slot.job
        streams = {out_r: p.Stream.STDOUT, err_r: p.Stream.STDERR}
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            while streams:
                slot.output.wait_for_room()  # past the log's bound the job blocks on its pipe, never loses output
                for key, _ in selector.select():
                    data = os.read(key.fd, READ_SIZE)
                    if not data:
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        del streams[key.fd]
                        continue
                    stream = streams[key.fd]
                    offset = slot.output.append(stream, data)
                    slot.flowing.wait()  # the master paused this job's output (a slow bpsh reader)
                    with slot.wire:
                        if slot.ws is not None:  # else the next link's JobResume sends it
                            _send_output(slot.ws, stream, job, offset, data)

    def _send_exit(self, slot: JobSlot, message: p.JobExit) -> None:
        """The job's end: to the master now if the link is up, and kept until the master acknowledges it."""
        if message.error:
            self.log(f"beoboot: job {message.job}: {message.error}")
        with slot.wire:
            slot.exit = message
            if slot.ws is not None:
                _send_frame(slot.ws, message)


def _send_output(ws: WebSocket, stream: int, job: int, offset: int, data: bytes) -> None:
    try:
        ws.send_binary(output_frame(stream, job, offset, data))
    except WebSocketError:
        pass  # the link broke: the output is in the job's log, for the next link


def _send_frame(ws: WebSocket, message: object) -> None:
    try:
        ws.send_text(p.encode_frame(message))
    except WebSocketError:
        pass


def _start_stdin(chunks: queue.Queue[bytes], fd: int) -> None:
    """Feed the job's stdin from the master's frames; a job with no input (bpsh -n, or </dev/null: the
    end of file is usually queued by now) needs no thread for it."""
    with chunks.mutex:
        at_end = len(chunks.queue) == 1 and chunks.queue[0] == b""
        if at_end:
            chunks.queue.popleft()
    if at_end:
        os.close(fd)
        return
    threading.Thread(target=_feed_stdin, args=(chunks, fd), daemon=True).start()


def _feed_stdin(chunks: queue.Queue[bytes], fd: int) -> None:
    try:
        while chunk := chunks.get():
            _write_all(fd, chunk)
    except OSError:
        pass  # the job closed its stdin or ended
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def start_runner(
    master_url: str,
    mac: str,
    env_root: str,
    max_bytes: int,
    log: Callable[[str], None],
    token: Callable[[], str] = lambda: "",
    verify: bool = False,
    power: Callable[[p.NodePower], None] | None = None,
) -> JobRunner:
    """Stage 3: the libcache at ENV_ROOT/.libcache (on the environment root's own mount, so its objects can
    be hard-linked into the root; see stage3.libcache), and the runner's link to the master. `verify`: the
    cache is on a local disk and may hold objects from an earlier boot: check them first."""
    cache = LibCache(
        os.path.join(env_root, LIBCACHE_DIR), env_root, master_url, max_bytes=max_bytes, durable=verify, token=token
    )
    if verify:
        kept, dropped = cache.verify()
        log(f"beoboot: libcache: {kept} objects kept from earlier boots, {dropped} damaged ones dropped")
    runner = JobRunner(master_url, mac, env_root, cache, log=log, token=token, power=power)
    runner.start()
    return runner
