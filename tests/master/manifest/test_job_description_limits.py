"""Describing a job is bounded, and one user's jobs never hold up another's: a library that is a FIFO is
refused by name at once, a description past its time budget is refused naming the command and the bound,
and slow descriptions of one user take at most a few threads, never all of them. The real beoserv and
simulated nodes where the finding was made with them; the Describer on its own where a stuck thread is
needed (nothing beoserv reads can block any more)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from master_helpers import bpsh_argv, let_others_reach, simulated_cluster

from agent import protocol as p
from beoboot.master.manifest.budget import DescriptionTooSlow
from beoboot.master.manifest.describe import ManifestBuilder
from beoboot.master.manifest.describer import GRACE, Describer
from beoboot.master.objects import ObjectStore

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="jobs of other users and simulated nodes: needs root")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
JOBS = 8  # more than the old shared pool's threads (min(32, cores + 4) = 6 on two cores)


@pytest.fixture
def open_dir():  # also where a test's master lives: pytest's tmp_path lies under a 0700 directory that
    # another pytest run may make 0700 again at any time, shutting out nobody's bpsh
    """A directory anyone may search and read."""
    path = Path(tempfile.mkdtemp(prefix="beoboot-describe-", dir="/tmp"))
    path.chmod(0o755)
    (path / "master").mkdir()
    yield path
    shutil.rmtree(path)


def program_with_fifo_library(directory: Path) -> Path:
    """`prog`, linked with RUNPATH $ORIGIN/lib against lib/libfoo.so.1, which is then a FIFO."""
    (directory / "foo.c").write_text("int foo(void) { return 0; }\n")
    (directory / "main.c").write_text("int foo(void);\nint main(void) { return foo(); }\n")
    lib = directory / "lib"
    lib.mkdir(mode=0o755)
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libfoo.so.1",
            "-o",
            str(lib / "libfoo.so.1"),
            str(directory / "foo.c"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "gcc",
            str(directory / "main.c"),
            "-o",
            str(directory / "prog"),
            f"-L{lib}",
            "-l:libfoo.so.1",
            "-Wl,-rpath,$ORIGIN/lib",
        ],
        check=True,
    )
    (lib / "libfoo.so.1").unlink()
    os.mkfifo(lib / "libfoo.so.1", 0o666)
    return directory / "prog"


def own_program(directory: Path, name: str) -> Path:
    """A program beoserv has not described yet: its manifest is built on a thread, not from cache."""
    path = directory / name
    shutil.copy("/usr/bin/true", path)
    return path


def bpsh_as(master, user: int, *args: str, cwd: str = "/") -> subprocess.Popen[str]:
    argv = ["/usr/bin/python3", *bpsh_argv(master.bpsh_socket, *args)[1:]]  # the venv's may be under /root
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=user, group=user, cwd=cwd
    )


def timed_bpsh(master, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(bpsh_argv(master.bpsh_socket, *args), capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@as_root
@needs_gcc
def test_jobs_whose_library_is_a_fifo_are_refused_by_name_and_hold_up_no_one(open_dir):
    """Each of these jobs held a thread of beoserv's pool in open() of the FIFO for ever; from the 7th on,
    every new job of every user waited behind them."""
    prog = program_with_fifo_library(open_dir)
    fresh = own_program(open_dir, "fresh")
    with simulated_cluster(open_dir / "master") as master:
        let_others_reach(master.bpsh_socket)
        fifo_jobs = [bpsh_as(master, NOBODY, "0", "./prog", cwd=str(open_dir)) for _ in range(JOBS)]
        try:
            outcomes = [job.communicate(timeout=30) + (job.returncode,) for job in fifo_jobs]
        finally:
            for job in fifo_jobs:
                job.kill()
        for _, err, code in outcomes:
            assert code == 127, (err, master.log_text()[-3000:])
            assert f"library libfoo.so.1 needed by {prog} not found" in err
            assert f"passed by {open_dir}/lib/libfoo.so.1: cannot read: not a regular file (a FIFO)" in err
        result, took = timed_bpsh(master, "0", str(fresh))
        assert result.returncode == 0, result.stderr
        assert took < 10


@as_root
def test_one_users_slow_descriptions_leave_threads_for_another_user(open_dir):
    """nobody's 8 jobs each bring a 2 GB file (sparse: hashing it is slow, storing it is free); root's job,
    asked for after them, is described at once on a thread of its own rather than queued behind them."""
    bigs = []
    for n in range(JOBS):
        big = open_dir / f"big{n}"
        with open(big, "wb") as f:
            f.truncate(2 << 30)
        big.chmod(0o644)
        bigs.append(big)
    fresh = own_program(open_dir, "fresh")
    with simulated_cluster(open_dir / "master") as master:
        let_others_reach(master.bpsh_socket)
        slow = [bpsh_as(master, NOBODY, "--cache", str(big), "0", "true") for big in bigs]
        try:
            time.sleep(1)  # all of them asked for before root's job
            result, took = timed_bpsh(master, "0", str(fresh))
            still_described = sum(job.poll() is None for job in slow)
        finally:
            for job in slow:
                job.kill()
                job.wait()
    assert result.returncode == 0, result.stderr
    assert took < 15
    assert still_described >= JOBS - 3  # nobody's jobs go two at a time; root's did not wait for them


def test_a_description_past_its_budget_is_refused_naming_the_command_and_the_bound(open_dir):
    tree = open_dir / "tree"
    for n in range(2000):
        (tree / f"d{n % 40}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{n % 40}" / f"f{n}").write_text(str(n))
    builder = ManifestBuilder(ObjectStore(), budget=0.05)
    request = p.JobRequest(
        "0", ("/bin/true", "--an-argument"), {"PATH": "/usr/bin:/bin"}, "/", 0, 0, cache=(str(tree),)
    )
    started = time.monotonic()
    with pytest.raises(
        DescriptionTooSlow,
        match=r"/bin/true --an-argument: describing the job's files took "
        r"more than 0\.05 s, its limit",
    ):
        builder.build(request)
    assert time.monotonic() - started < 2
    assert ManifestBuilder(ObjectStore()).build(request).files  # the same job within the default budget


def request_of(uid: int, *argv: str) -> p.JobRequest:
    return p.JobRequest("0", argv, {}, "/", uid, uid)


def test_a_stuck_description_holds_only_its_own_users_slots_until_it_really_ends():
    """A build that never returns (as open() of a FIFO did) for user 1000: user 1000's jobs are refused
    after the budget, naming the command; user 1001's job is described at once all the while; user 1000's
    slots come back only when the stuck threads end, so stuck threads never pile up beyond them."""
    release = threading.Event()
    entered: list[str] = []

    def build(request: p.JobRequest) -> p.JobManifest:
        entered.append(request.argv[0])
        if request.uid == 1000:
            release.wait(30)
        return p.JobManifest(
            argv=request.argv, executable=request.argv[0], env={}, cwd="/", uid=request.uid, gid=request.uid, files=()
        )

    async def scenario() -> None:
        describer = Describer(build, budget=0.2, per_user=2)
        stuck = [asyncio.create_task(describer.describe(request_of(1000, f"stuck{n}"))) for n in range(JOBS)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        other = await describer.describe(request_of(1001, "other"))
        assert other.argv == ("other",) and time.monotonic() - started < 1
        results = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(r, DescriptionTooSlow) for r in results)
        assert "stuck0: describing the job's files took more than 0.2 s" in str(results[0])
        assert entered.count("other") == 1 and len([e for e in entered if e.startswith("stuck")]) == 2
        # the 6 that waited for a slot gave up waiting; the 2 stuck threads still hold theirs
        assert describer.running(1000) == 2
        release.set()
        for _ in range(100):
            if describer.running(1000) == 0:
                break
            await asyncio.sleep(0.05)
        assert describer.running(1000) == 0

    asyncio.run(asyncio.wait_for(scenario(), 20 + GRACE))
