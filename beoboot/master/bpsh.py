"""`bpsh NODE[,NODE...|-a] COMMAND [ARGS...]`: run the master's COMMAND on nodes; `bps`: list the jobs.

bpsh talks to beoserv over one WebSocket (agent.wsclient; standard library only, so it starts quickly:
no requests, no aiohttp). stdin is forwarded to the job (to a single node only; with several nodes, or
with -n, the jobs read end of file), stdout and stderr come back on bpsh's own, signals reach the job's
process group, and bpsh exits with the job's status (128+N for a job killed by signal N, as a shell says;
the highest status when several nodes ran it).

Ctrl-Z: bpsh stops the remote job (SIGSTOP) and then itself; `fg`/`bg` (SIGCONT to bpsh) continues both.
A plain SIGSTOP sent to bpsh cannot be caught, so it stops only bpsh; the SIGCONT that resumes it is
forwarded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import struct
import sys
from dataclasses import dataclass

from agent import protocol as p
from agent.wsclient import OP_TEXT, WebSocket, WebSocketError

DEFAULT_MASTER = "http://127.0.0.1:8080"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
NO_EXIT = 255  # the master went away before the job's status came back (ssh answers 255 likewise)
USAGE = """usage: bpsh [--master URL] [-n] [--cache PATH]... NODE[,NODE...] COMMAND [ARGS...]
       bpsh [--master URL] [-n] [--cache PATH]... -a COMMAND [ARGS...]"""


class BpshUsageError(Exception):
    pass


@dataclass(frozen=True)
class BpshOptions:
    master: str
    nodes: str  # as agent.protocol.JobRequest.nodes: '0', '0,3', 'all'
    argv: tuple[str, ...]
    cache: tuple[str, ...] = ()
    no_stdin: bool = False


def parse_args(args: list[str], environ: dict[str, str] | None = None) -> BpshOptions:
    """Options first, then the node list (or -a), then the command and its arguments, untouched."""
    environ = os.environ if environ is None else environ
    master = environ.get("BEOSERV_URL", DEFAULT_MASTER)
    cache: list[str] = []
    no_stdin = every = False
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("--master", "--cache"):
            if not rest:
                raise BpshUsageError(f"{option} needs a value")
            value = rest.pop(0)
            if option == "--master":
                master = value
            else:
                cache.append(value)
        elif option.startswith(("--master=", "--cache=")):
            name, _, value = option.partition("=")
            master, cache = (value, cache) if name == "--master" else (master, cache + [value])
        elif option == "-n":
            no_stdin = True
        elif option in ("-a", "--all"):
            every = True
        elif option == "--":
            break
        else:
            raise BpshUsageError(f"unknown option {option!r}")
    if not every:
        if not rest:
            raise BpshUsageError("no node given")
        nodes = rest.pop(0)
    else:
        nodes = "all"
    if not rest:
        raise BpshUsageError("no command given")
    return BpshOptions(master, nodes, tuple(rest), tuple(cache), no_stdin)


def job_request(options: BpshOptions) -> p.JobRequest:
    single = options.nodes != "all" and "," not in options.nodes and "-" not in options.nodes
    return p.JobRequest(
        nodes=options.nodes, argv=options.argv, env=dict(os.environ), cwd=os.getcwd(),
        uid=os.getuid(), gid=os.getgid(), cache=options.cache, stdin=single and not options.no_stdin,
    )  # fmt: skip


class Bpsh:
    """One bpsh run: send the request, relay until every job has ended, return the exit status."""

    def __init__(self, options: BpshOptions, *, stdin: int = 0, stdout: int = 1, stderr: int = 2) -> None:
        self.options = options
        self.fds = {p.Stream.STDOUT: stdout, p.Stream.STDERR: stderr}
        self.stdin = stdin
        self.statuses: dict[int, int] = {}
        self.started: dict[int, p.JobStarted] = {}
        self._pending: list[int] = []
        self._wakeup_r = self._wakeup_w = -1

    def run(self, *, signals: bool = False) -> int:
        request = job_request(self.options)
        ws = WebSocket.connect(self.options.master.rstrip("/") + p.BPSH_PATH)
        try:
            ws.send_text(p.encode_frame(request))
            if signals:
                self._install_signals()
            return self._relay(ws, request.stdin)
        finally:
            ws.close()
            if signals:
                self._restore_signals()

    def _relay(self, ws: WebSocket, forward_stdin: bool) -> int:
        # poll, not epoll: epoll refuses regular files and /dev/null as stdin
        with selectors.PollSelector() as selector:
            selector.register(ws.sock, selectors.EVENT_READ, "ws")
            if forward_stdin:
                selector.register(self.stdin, selectors.EVENT_READ, "stdin")
            if self._wakeup_r >= 0:
                selector.register(self._wakeup_r, selectors.EVENT_READ, "signal")
            while True:
                ready = ["ws"] if ws.pending() else [key.data for key, _ in selector.select()]
                try:
                    for source in ready:
                        if source == "ws":
                            self._from_master(ws)
                        elif source == "stdin":
                            data = os.read(self.stdin, 65536)
                            ws.send_binary(struct.pack(p.IO_HEADER, p.Stream.STDIN, 0) + data)
                            if not data:
                                selector.unregister(self.stdin)
                        else:
                            self._forward_signals(ws)
                except WebSocketError:
                    break
        if not self.statuses:
            return NO_EXIT
        return max(self.statuses.values())

    def _from_master(self, ws: WebSocket) -> None:
        opcode, payload = ws.recv()
        if opcode != OP_TEXT:
            stream, _ = struct.unpack_from(p.IO_HEADER, payload)
            _write_all(self.fds.get(stream, 2), memoryview(payload)[5:])
            return
        message = p.decode_frame(payload)
        if isinstance(message, p.JobStarted):
            self.started[message.job] = message
        elif isinstance(message, p.JobExit):
            self.statuses[message.job] = message.status
            if message.error:
                where = f"node {message.node}: " if message.node >= 0 else ""
                _write_all(self.fds[p.Stream.STDERR], f"bpsh: {where}{message.error}\n".encode())

    # --- signals ------------------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for signum in (*FORWARDED_SIGNALS, signal.SIGTSTP, signal.SIGCONT):
            signal.signal(signum, self._note_signal)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (*FORWARDED_SIGNALS, signal.SIGTSTP, signal.SIGCONT):
            signal.signal(signum, signal.SIG_DFL)

    def _note_signal(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    def _forward_signals(self, ws: WebSocket) -> None:
        os.read(self._wakeup_r, 512)  # the selector said it is readable: this does not block
        pending, self._pending = self._pending, []
        for signum in pending:
            if signum == signal.SIGTSTP:
                ws.send_text(p.encode_frame(p.JobSignal(0, signal.SIGSTOP)))
                signal.signal(signal.SIGTSTP, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTSTP)  # stop here until fg/bg
                signal.signal(signal.SIGTSTP, self._note_signal)
            else:
                ws.send_text(p.encode_frame(p.JobSignal(0, signum)))


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def bpsh_main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except BpshUsageError as exc:
        print(f"bpsh: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return Bpsh(options).run(signals=True)
    except WebSocketError as exc:
        print(f"bpsh: cannot reach beoserv at {options.master}: {exc}\n  hint: is beoserv running? see --master "
              "or $BEOSERV_URL", file=sys.stderr)  # fmt: skip
        return NO_EXIT


# --- bps -------------------------------------------------------------------------------------------------


def format_jobs(jobs: p.JobList) -> str:
    rows = [("job", "node", "pid", "state", "status", "command")]
    for j in jobs.jobs:
        rows.append((str(j.job), p.node_name(j.node), str(j.pid or "-"), str(j.state),
                     "-" if j.status is None else str(j.status), j.command))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)


def bps_main(argv: list[str] | None = None) -> int:
    """`bps [--master URL] [--json] [--all]`: the jobs running on the nodes (with --all, recently ended ones)."""
    args = sys.argv[1:] if argv is None else argv
    master = os.environ.get("BEOSERV_URL", DEFAULT_MASTER)
    if "--master" in args:
        master = args[args.index("--master") + 1]
    import urllib.request  # here, not at the top: it costs bpsh 25 ms of start-up

    try:
        with urllib.request.urlopen(master.rstrip("/") + p.JOBS_PATH, timeout=10) as response:
            jobs = p.from_json(p.JobList, response.read())
    except OSError as exc:
        print(f"bps: cannot reach beoserv at {master}: {exc}", file=sys.stderr)
        return 1
    if "--all" not in args:
        jobs = p.JobList(tuple(j for j in jobs.jobs if j.state in (p.JobState.STARTING, p.JobState.RUNNING)))
    if "--json" in args:
        print(json.dumps([dataclasses.asdict(j) for j in jobs.jobs], indent=1))
    else:
        sys.stdout.write(format_jobs(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(bpsh_main())
