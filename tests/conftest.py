import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BEOBOOT = [sys.executable, "-m", "beoboot"]


def run_beoboot(*args, check=True, cwd=None, env=None, **kwargs):
    """Run the real command line in a child process, as a user would."""
    result = subprocess.run(
        [*BEOBOOT, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT,
        env={**os.environ, **(env or {})}, **kwargs,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"beoboot-build {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


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
