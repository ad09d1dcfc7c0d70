"""The node's job runner when something goes wrong around a job: its launcher dies or cannot fork, the link
to the master breaks while a job runs on (and a new link takes it back), a job's thread meets a bug. The real
launcher helper process starts real jobs (busybox) chrooted in a scratch environment root."""

import contextlib
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent import protocol as p
from stage3.jobrunner import JobRunner, Workers
from stage3.launcher import Launcher
from stage3.libcache import LibCache

BUSYBOX = shutil.which("busybox")
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")  # cgroup v1's pids hierarchy, where a test can set pids.max
NOBODY = 65534  # a job of another user is forked, not posix_spawn'ed: the path that can fail to fork

pytestmark = [
    pytest.mark.skipif(os.getuid() != 0, reason="the launcher chroots into the environment root: needs root"),
    pytest.mark.skipif(BUSYBOX is None, reason="the jobs are busybox commands"),
]


class Link:
    """Stands for one job link's WebSocket: keeps what the node sends, decoded as the master reads it."""

    def __init__(self) -> None:
        self.messages: list[object] = []
        self.output: list[tuple[int, bytes]] = []  # (job, bytes), stdout and stderr alike

    def send_text(self, text: str) -> None:
        self.messages.append(p.decode_frame(text))

    def send_binary(self, frame: bytes) -> None:
        _, job, _ = struct.unpack_from(p.OUTPUT_HEADER, frame)
        self.output.append((job, frame[p.OUTPUT_HEADER_SIZE :]))

    def started(self, job: int) -> bool:
        return any(isinstance(m, p.JobStarted) and m.job == job for m in self.messages)

    def exit_of(self, job: int, timeout: float = 10.0) -> p.JobExit:
        wait_for(lambda: self._exit(job) is not None, timeout, f"the exit of job {job}")
        return self._exit(job)

    def _exit(self, job: int) -> p.JobExit | None:
        return next((m for m in self.messages if isinstance(m, p.JobExit) and m.job == job), None)

    def printed(self, text: bytes) -> bool:
        return text in b"".join(data for _, data in self.output)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.02)


def sh(script: str, uid: int = 0) -> p.JobManifest:
    return p.JobManifest(
        argv=("sh", "-c", script), executable="/bin/busybox", env={"PATH": "/bin"}, cwd="/", uid=uid, gid=uid, files=()
    )


def copy_with_libraries(program: str, root: Path, target: str) -> None:
    """`program` at `target` in `root`, with the libraries ldd names at their own paths."""
    (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(program, root / target.lstrip("/"))
    listing = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
    for library in re.findall(r"(/\S+)", listing):
        copy = root / library.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library, copy)


@pytest.fixture
def env_root(tmp_path):
    root = tmp_path / "env"
    (root / "tmp").mkdir(parents=True)
    copy_with_libraries(BUSYBOX, root, "/bin/busybox")
    for applet in ("sh", "sleep", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


@pytest.fixture
def runner(env_root):
    """A runner with its own launcher, as _link_forever leaves it; its jobs and launchers end with the test."""
    first = Launcher(str(env_root))
    cache = LibCache(str(env_root / ".libcache"), str(env_root), "http://127.0.0.1:9")  # jobs bring no files
    runner = JobRunner("http://127.0.0.1:9", "02:be:0b:00:00:01", str(env_root), cache, launcher=first)
    yield runner
    runner.end_jobs(1.0)
    for launcher in {first, runner.launcher}:
        if launcher.process.poll() is None:
            launcher.process.kill()
            launcher.process.wait()


def run_job(runner: JobRunner, job: int, manifest: p.JobManifest) -> tuple[Link, p.JobExit]:
    link = Link()
    runner._control(link, p.JobStart(job, manifest))
    return link, link.exit_of(job)


# --- the launcher ---------------------------------------------------------------------------------------


def test_a_job_after_the_launcher_died_gets_a_new_launcher(runner):
    """A root job's `kill -9 -1` or the OOM killer can end the helper; the node must not be left unable to
    run anything until it reboots."""
    assert run_job(runner, 1, sh("echo before"))[1].status == 0
    dead = runner.launcher
    dead.process.kill()
    dead.process.wait()
    wait_for(lambda: not dead.alive(), 5, "the runner to see its launcher gone")
    link, ended = run_job(runner, 2, sh("echo after"))
    assert (ended.status, ended.error) == (0, "")
    assert link.printed(b"after\n")
    assert runner.launcher is not dead and runner.launcher.alive()


@contextlib.contextmanager
def no_descriptor_left(pid: int):
    """The process may receive a job's three descriptors, but os.pipe() then fails with EMFILE."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = [fd for fd in range(max(open_fds) + 4) if fd not in open_fds]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[2] + 1, hard))  # the lowest free numbers go first
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def no_process_left(pid: int):
    """The process is alone in a pids cgroup of one: fork() fails with EAGAIN, as under a user's fork bomb."""
    if not (PIDS_CGROUP / "cgroup.procs").exists():
        pytest.skip("needs cgroup v1's pids hierarchy at /sys/fs/cgroup/pids")
    home = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.split(":")[1] == "pids"
    )
    cgroup = PIDS_CGROUP / f"beoboot-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        (cgroup / "cgroup.procs").write_text(str(pid))
        (cgroup / "pids.max").write_text("1")
        yield
    finally:
        (PIDS_CGROUP / home.lstrip("/") / "cgroup.procs").write_text(str(pid))
        cgroup.rmdir()


@pytest.mark.parametrize("starve", [no_descriptor_left, no_process_left], ids=["pipe-EMFILE", "fork-EAGAIN"])
def test_a_job_the_launcher_cannot_fork_fails_alone(runner, starve):
    launcher = runner.launcher
    assert run_job(runner, 1, sh("echo ready", uid=NOBODY))[1].status == 0  # the helper has set itself up
    descriptors = os.listdir(f"/proc/{launcher.process.pid}/fd")
    with starve(launcher.process.pid):
        ended = run_job(runner, 2, sh("echo never", uid=NOBODY))[1]
    assert ended.status == 127 and "cannot start a process for it" in ended.error, ended
    assert launcher.process.poll() is None, "the launcher died of it"
    link, ended = run_job(runner, 3, sh("echo next", uid=NOBODY))
    assert (ended.status, ended.error) == (0, ""), ended
    assert runner.launcher is launcher
    assert sorted(os.listdir(f"/proc/{launcher.process.pid}/fd")) == sorted(descriptors), "descriptors kept"


# --- a link lost while jobs run ------------------------------------------------------------------------


def job_left_by_a_lost_link(runner: JobRunner, script: str) -> Link:
    """Job 1 of a master that then went away (a restart, a broken switch): its link is gone, the job runs on."""
    old = Link()
    runner._control(old, p.JobStart(1, sh(f"echo ready; {script}")))
    wait_for(lambda: old.printed(b"ready\n"), 10, "the job to start")
    runner._detach_all()
    return old


def test_a_lost_link_ends_no_job_and_a_new_link_gets_exactly_the_rest_of_its_output(runner, env_root):
    old = job_left_by_a_lost_link(runner, "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after; exit 7")
    (env_root / "tmp" / "go").touch()
    time.sleep(0.5)  # it ends with no link: its last line and its exit are kept
    assert old.output == [(1, b"ready\n")] and old._exit(1) is None
    new = Link()
    runner._report(new)
    [report] = new.messages
    assert report == p.JobReport((p.JobHeld(1, 0, 12, 0, True, 0, report.jobs[0].command),))
    runner._control(new, p.JobResume(1, len(b"ready\n"), 0))  # what the job's bpsh has
    assert new.output == [(1, b"after\n")]
    assert new.exit_of(1).status == 7
    runner._control(new, p.JobAck(1, 12, 0, exit=True))
    assert 1 not in runner._slots  # acknowledged: forgotten


def test_jobs_left_by_a_lost_link_still_end_when_the_node_powers_off(runner):
    old = job_left_by_a_lost_link(runner, "sleep 30")
    new = Link()
    runner._control(new, p.JobStart(2, sh("sleep 30")))
    wait_for(lambda: new.started(2), 10, "the new job 2 to start")
    assert runner.end_jobs(5.0) == 0
    runner._control(new, p.JobResume(1, 0, 0))
    assert old._exit(1) is None and new.exit_of(1, timeout=1).signal == signal.SIGTERM
    assert new.exit_of(2, timeout=1).signal == signal.SIGTERM


# --- the worker threads ---------------------------------------------------------------------------------


def test_a_worker_whose_task_raised_serves_on_and_is_counted_once(capfd):
    """A dead thread counted idle made the next job wait for a thread that would never come."""
    workers = Workers()
    raised = threading.Event()

    def bug() -> None:
        raised.set()
        raise ValueError("a bug met by one job")

    workers.submit(bug)
    raised.wait(5)
    wait_for(lambda: workers._idle == 1, 5, "the worker to be counted idle")  # then the next job is its
    both_running = threading.Barrier(2, timeout=5)
    met: list[bool] = []
    for _ in range(2):
        workers.submit(lambda: met.append(both_running.wait() >= 0))
    wait_for(lambda: len(met) == 2, 6, "two jobs to run side by side")
    assert met == [True, True]
    err = capfd.readouterr().err
    assert "ValueError: a bug met by one job" in err and "Exception in thread" not in err


# --- the link ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame", [("text", '{"type": "job_start", "body": {"job": NaN}}'), ("text", "[[[[" * 40), ("bytes", b"\x01")]
)
def test_a_frame_no_master_sends_closes_the_link_and_the_node_links_again(env_root, frame):
    """A bad frame (an impostor on the wire, a bug) must not end the node's link thread: with it gone the
    node would never take a job again until it rebooted. The link is closed, logged, and made again."""
    import asyncio

    from aiohttp import web

    connects: list[int] = []
    loop = asyncio.new_event_loop()

    async def link(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connects.append(1)
        kind, data = frame
        await (ws.send_str(data) if kind == "text" else ws.send_bytes(data))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get(p.JOBS_LINK_PATH, link)
    runner_ = web.AppRunner(app)
    loop.run_until_complete(runner_.setup())
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    logged: list[str] = []
    url = f"http://127.0.0.1:{port}"
    cache = LibCache(str(env_root / ".libcache"), str(env_root), url)
    jobs = JobRunner(
        url, "02:be:0b:00:00:02", str(env_root), cache, log=logged.append, launcher=Launcher(str(env_root))
    )
    link_thread = jobs.start()
    try:
        wait_for(lambda: len(connects) >= 2, 10, "the node to link again after the bad frame")
        assert link_thread.is_alive()
        assert any("not valid" in line for line in logged), logged
    finally:
        jobs.stop()
        jobs.end_jobs(1.0)
        if jobs.launcher and jobs.launcher.process.poll() is None:
            jobs.launcher.process.kill()
            jobs.launcher.process.wait()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
