import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fuzzing: every parser's property test runs a small budget in the suite; benchmarks/fuzz.py runs the same
# properties with BEOBOOT_FUZZ=long for a long one.
settings.register_profile("suite", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("BEOBOOT_FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("BEOBOOT_FUZZ", "suite"))

ROOT = Path(__file__).resolve().parent.parent
BEOBOOT = [sys.executable, "-m", "beoboot"]


def run_beoboot(*args, check=True, cwd=None, env=None, **kwargs):
    """Run the real command line in a child process, as a user would."""
    result = subprocess.run(
        [*BEOBOOT, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"beoboot-build {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


# Dispositions a test may change in-process by calling a program's main(). They are put back after each
# test; SIGPIPE at its default is an error of the test's, as pytest would then die without a word (exit
# -13) on its next write to a closed socket, far from the test that did it.
GUARDED_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


@pytest.fixture(autouse=True)
def signals_put_back():
    before = {signum: signal.getsignal(signum) for signum in GUARDED_SIGNALS}
    yield
    pipe_changed = signal.getsignal(signal.SIGPIPE) != before[signal.SIGPIPE]
    for signum, handler in before.items():
        if handler is not None:
            signal.signal(signum, handler)
    assert not pipe_changed, "the test changed pytest's SIGPIPE disposition: call the program in a child process"


def have_kernel():
    return any(Path("/boot").glob("vmlinuz-*")) and shutil.which("qemu-system-x86_64")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One build with the embedded default config, shared by the tests that only read it."""
    if not have_kernel():
        pytest.skip("needs a kernel in /boot and QEMU: run `python3 build.py setup`")
    outdir = tmp_path_factory.mktemp("out")
    run_beoboot("build", "-q", "-o", outdir)
    return outdir


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """The session's one build whose master is at shared_port(), for the QEMU modules that only read it."""
    from master_helpers import build_for_master, shared_port

    return build_for_master(tmp_path_factory, shared_port())
