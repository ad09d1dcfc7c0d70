"""The job launcher: a small helper process that forks and execs the jobs, and collects their exit statuses.

Why a separate process: fork() in the agent copies the page tables of a 40 MB Python process and the
child faults in pages on its way to exec; measured on the master host that is 3.3 ms from fork to exec
against 0.9 ms from a `python -S` process that imported nothing but this module. A cached job must start
in a few milliseconds, so the agent starts this helper once (python -S, standard library only) and asks it
over a SOCK_SEQPACKET socket pair: one JSON message per request, the job's stdin/stdout/stderr passed as
file descriptors (SCM_RIGHTS).

It also settles who reaps a job: the jobs are the launcher's children, not PID 1's, so the supervisor's
SIGCHLD reaper can never take a job's status first.

Messages, launcher side: {"job", "spec"} + 3 fds -> {"job", "pid"} or {"job", "error"}; later
{"job", "status"} (the raw wait status) when the job ends.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from queue import Queue

MAX_MESSAGE = 1 << 20
EXEC_FAILED = 127


class LaunchError(Exception):
    """The job could not be started (chroot, user, exec); the text says why."""


# --- the helper process ---------------------------------------------------------------------------------


def exec_job(spec: dict, fds: list[int], report: int) -> None:
    """In the forked child: become the job. Never returns; a failure is written to `report`, exit 127."""
    try:
        os.setsid()  # its own process group: a signal from bpsh reaches `sh -c` and its children too
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:  # received by SCM_RIGHTS without close-on-exec
            os.close(fd)
        os.chroot(spec["root"])
        try:
            os.chdir(spec["cwd"] or "/")
        except OSError:
            os.chdir("/")  # the master's working directory is not on the node: run in / as rsh did
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        os.execve(spec["executable"], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - anything, so the agent learns why
        try:
            os.write(report, f"{spec['executable']}: {exc}".encode(errors="replace"))
        finally:
            os._exit(EXEC_FAILED)


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, int] = {}  # pid -> job

    def send(message: dict) -> None:
        sock.send(json.dumps(message).encode())

    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, "request")
        selector.register(wake_r, selectors.EVENT_READ, "child")
        while True:
            for key, _ in selector.select():
                if key.data == "child":
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    while running:
                        try:
                            pid, status = os.waitpid(-1, os.WNOHANG)
                        except ChildProcessError:
                            break
                        if pid == 0:
                            break
                        job = running.pop(pid, None)
                        if job is not None:
                            send({"job": job, "status": status})
                    continue
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
                if not data:
                    return  # the agent is gone
                request = json.loads(data)
                report_r, report_w = os.pipe()  # close-on-exec: EOF at exec, a message if the child failed
                pid = os.fork()
                if pid == 0:
                    os.close(report_r)
                    exec_job(request["spec"], fds, report_w)
                os.close(report_w)
                for fd in fds:
                    os.close(fd)
                with os.fdopen(report_r, "rb") as report:
                    failure = report.read()
                if failure:
                    os.waitpid(pid, 0)
                    send({"job": request["job"], "error": failure.decode(errors="replace")})
                else:
                    running[pid] = request["job"]
                    send({"job": request["job"], "pid": pid})


def main() -> None:
    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)  # pass_fds made it inheritable: the jobs must not get the control socket
    serve(socket.socket(fileno=fd))


# --- the agent's handle on it ---------------------------------------------------------------------------


class Launcher:
    """Start jobs through the helper process; one per agent process, shared by every node it simulates."""

    _shared: Launcher | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> Launcher:
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive():
                cls._shared = cls()
            return cls._shared

    def __init__(self, log: Callable[[str], None] = lambda message: None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = f"import sys; sys.path.insert(0, {package_parent!r}); from agent.launcher import main; main()"
        self.process = subprocess.Popen([sys.executable, "-S", "-c", boot, str(theirs.fileno())], pass_fds=[theirs.fileno()])
        theirs.close()
        self.sock = ours
        self._replies: dict[int, Queue[dict]] = {}
        self._lock = threading.Lock()
        self._dead = False
        threading.Thread(target=self._read_replies, name="launcher", daemon=True).start()

    def alive(self) -> bool:
        return not self._dead

    def _read_replies(self) -> None:
        try:
            while data := self.sock.recv(MAX_MESSAGE):
                reply = json.loads(data)
                with self._lock:
                    waiting = self._replies.get(reply["job"])
                if waiting is not None:
                    waiting.put(reply)
        except OSError:
            pass
        self._dead = True
        with self._lock:
            for waiting in self._replies.values():
                waiting.put({"error": "the job launcher died", "status": EXEC_FAILED << 8})

    def spawn(self, job: int, spec: dict, fds: tuple[int, int, int]) -> int:
        """Start the job; its pid, or LaunchError."""
        replies: Queue[dict] = Queue()
        with self._lock:
            self._replies[job] = replies
        try:
            socket.send_fds(self.sock, [json.dumps({"job": job, "spec": spec}).encode()], list(fds))
        except OSError as exc:
            self.forget(job)
            raise LaunchError(f"the job launcher is gone: {exc}") from None
        reply = replies.get()
        if "error" in reply:
            self.forget(job)
            raise LaunchError(reply["error"])
        return int(reply["pid"])

    def wait(self, job: int) -> int:
        """The raw wait status of a job spawn() started."""
        with self._lock:
            replies = self._replies[job]
        reply = replies.get()
        self.forget(job)
        return int(reply["status"])

    def forget(self, job: int) -> None:
        with self._lock:
            self._replies.pop(job, None)


if __name__ == "__main__":
    main()
