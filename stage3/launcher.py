"""The job launcher: a small helper process that forks and execs the jobs, and collects their exit statuses."""

# Why a separate process: fork() in the agent copies the page tables of a 40 MB Python process and the
# child faults in pages on its way to exec; measured on the master host that is 3.3 ms from fork to exec
# against 0.9 ms from a `python -S` process that imported nothing but this module. A cached job must start
# in a few milliseconds, so the agent starts this helper once (python -S, standard library only) and asks it
# over a SOCK_SEQPACKET socket pair: one JSON message per request, the job's stdin/stdout/stderr passed as
# file descriptors (SCM_RIGHTS).
#
# It also settles who reaps a job: the jobs are the launcher's children, not PID 1's, so the supervisor's
# SIGCHLD reaper can never take a job's status first.
#
# Messages, launcher side: {"job", "spec"} + 3 fds -> {"job", "pid"} or {"job", "error"}; later
# {"job", "status"} (the raw wait status) when the job ends, with "error" when its exec failed.

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
# A job starts with every signal at its default action and none blocked, as from a fresh shell. What this
# process ignores is inherited through exec unless reset: Python ignores SIGPIPE and SIGXFSZ (`yes | head`
# in a job must end by SIGPIPE), and an agent started under nohup ignores SIGHUP (a job whose bpsh went
# away must end by it).
RESTORED_SIGNALS = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))


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
        for signum in RESTORED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        try:
            os.chdir(spec["cwd"] or "/")
        except OSError:
            os.chdir("/")  # the master's working directory is not on the node: run in / as rsh did
        os.setgroups(spec.get("groups", []))
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        os.execve(spec["executable"], spec["argv"], spec["env"])
    except BaseException as exc:  # noqa: BLE001 - anything, so the agent learns why
        try:
            os.write(report, f"{spec['executable']}: {exc}".encode(errors="replace"))
        finally:
            os._exit(EXEC_FAILED)


def spawn_as_root(spec: dict, fds: list[int]) -> int:
    """A root job without fork(): posix_spawn (vfork underneath) saves copying this process's page tables,
    half a millisecond of a cached job. It can set the session and the descriptors but not the user or
    groups, so only jobs of uid 0 and gid 0 with no other group come this way; the working directory is
    this single-threaded process's own for the moment of the spawn. An exec failure raises OSError here."""
    try:
        os.chdir(spec["cwd"] or "/")
    except OSError:
        os.chdir("/")
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in set(fds) - {0, 1, 2}]
    try:
        return os.posix_spawn(
            spec["executable"],
            spec["argv"],
            spec["env"],
            file_actions=actions,
            setsid=True,
            setsigdef=RESTORED_SIGNALS,
            setsigmask=(),
        )
    finally:
        os.chdir("/")


def fork_job(spec: dict, fds: list[int]) -> tuple[int, int]:
    """Fork the child that becomes the job: its pid, and the read end of the pipe its exec failure comes on.
    The child never returns from here."""
    report_r, report_w = os.pipe()  # close-on-exec: EOF at exec, a message if the child failed
    try:
        pid = os.fork()
    except OSError:
        os.close(report_r)
        os.close(report_w)
        raise
    if pid == 0:
        os.close(report_r)
        exec_job(spec, fds, report_w)
    os.close(report_w)
    return pid, report_r


class Helper:
    """The helper process's state: jobs running, exec reports not yet read."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        self.sock, self.selector = sock, selector
        self.running: dict[int, int] = {}  # pid -> job
        self.reports: dict[int, int] = {}  # pid -> read end of its exec report pipe
        self.failures: dict[int, str] = {}  # pid -> why its exec failed

    def send(self, message: dict) -> None:
        self.sock.send(json.dumps(message).encode())

    def start(self, request: dict, fds: list[int]) -> None:
        spec, job = request["spec"], request["job"]
        if spec["uid"] == 0 and spec["gid"] == 0 and set(spec.get("groups", ())) <= {0}:
            try:
                pid = spawn_as_root(spec, fds)
            except OSError as exc:
                self.send({"job": job, "error": f"{spec['executable']}: {exc}"})
                return
            finally:
                for fd in fds:
                    os.close(fd)
            self.running[pid] = job
            self.send({"job": job, "pid": pid})
            return
        try:
            pid, report_r = fork_job(spec, fds)
        except OSError as exc:  # EAGAIN under a pids limit, EMFILE: this job fails, the others go on
            self.send({"job": job, "error": f"{spec['executable']}: cannot start a process for it: {exc}"})
            return
        finally:
            for fd in fds:
                os.close(fd)
        # the pid goes back now, not after the exec: waiting for it would cost the job a round trip; a
        # failure comes with the exit status instead
        self.running[pid] = job
        self.reports[pid] = report_r
        self.selector.register(report_r, selectors.EVENT_READ, pid)
        self.send({"job": job, "pid": pid})

    def read_report(self, pid: int) -> None:
        fd = self.reports.pop(pid, None)
        if fd is None:
            return
        self.selector.unregister(fd)
        with os.fdopen(fd, "rb") as report:  # the child exec'd or died: this does not block
            failure = report.read()
        if failure:
            self.failures[pid] = failure.decode(errors="replace")

    def reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.running.pop(pid, None)
            self.read_report(pid)
            failure = self.failures.pop(pid, None)
            if job is not None:
                self.send({"job": job, "status": status, **({"error": failure} if failure else {})})


def serve(sock: socket.socket, root: str) -> None:
    # the helper lives in the environment root, so a root job needs no chroot of its own (see
    # spawn_as_root); it has no supplementary groups to pass on either
    os.chroot(root)
    os.chdir("/")
    os.setgroups([])
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    with selectors.DefaultSelector() as selector:
        helper = Helper(sock, selector)
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
                    helper.reap()
                elif key.data == "request":
                    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
                    if not data:
                        return  # the agent is gone
                    helper.start(json.loads(data), fds)
                else:
                    helper.read_report(key.data)


def main() -> None:
    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)  # pass_fds made it inheritable: the jobs must not get the control socket
    serve(socket.socket(fileno=fd), sys.argv[2])


# --- the agent's handle on it ---------------------------------------------------------------------------


class Launcher:
    """Start jobs through a helper process living in the environment root `root`; one per root (a simnode
    process simulating several nodes has one per node)."""

    _shared: dict[str, Launcher] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, root: str) -> Launcher:
        with cls._shared_lock:
            launcher = cls._shared.get(root)
            if launcher is None or not launcher.alive():
                launcher = cls._shared[root] = cls(root)
            return launcher

    def __init__(self, root: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        boot = f"import sys; sys.path.insert(0, {package_parent!r}); from stage3.launcher import main; main()"
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", boot, str(theirs.fileno()), root], pass_fds=[theirs.fileno()]
        )
        theirs.close()
        self.sock = ours
        self._replies: dict[int, Queue[dict]] = {}
        self._on_pid: dict[int, Callable[[int], None]] = {}
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
                    started = self._on_pid.pop(reply["job"], None)
                if "pid" in reply:
                    if started is not None:
                        started(int(reply["pid"]))
                elif waiting is not None:
                    if "status" not in reply:  # it could not be started at all
                        reply["status"] = EXEC_FAILED << 8
                    waiting.put(reply)
        except OSError:
            pass
        self._dead = True
        with self._lock:
            for waiting in self._replies.values():
                waiting.put({"error": "the job launcher died", "status": EXEC_FAILED << 8})

    def start(self, job: int, spec: dict, fds: tuple[int, int, int], on_pid: Callable[[int], None]) -> None:
        """Ask for the job to be started and return at once: on_pid(pid) is called (in another thread)
        when it runs, and wait() gives its status, or why it could not start. `job` must be unique among
        this launcher's jobs for as long as they run, which the master's job ids are not (they start from 1
        again when the master restarts, while a job that ignored SIGHUP runs on). Not waiting for the pid here
        lets the caller read the job's output while the launcher is still answering: a cached job's
        round trip is a few milliseconds, and this was a tenth of it."""
        with self._lock:
            self._replies[job] = Queue()
            self._on_pid[job] = on_pid
        try:
            socket.send_fds(self.sock, [json.dumps({"job": job, "spec": spec}).encode()], list(fds))
        except OSError as exc:
            self.forget(job)
            raise LaunchError(f"the job launcher is gone: {exc}") from None

    def wait(self, job: int) -> tuple[int, str]:
        """The raw wait status of a job start() started, and why it could not run (or "")."""
        with self._lock:
            replies = self._replies[job]
        reply = replies.get()
        self.forget(job)
        return int(reply["status"]), reply.get("error", "")

    def forget(self, job: int) -> None:
        with self._lock:
            self._replies.pop(job, None)
            self._on_pid.pop(job, None)


if __name__ == "__main__":
    main()
