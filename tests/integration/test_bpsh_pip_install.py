"""`pip install` of beoboot installs the compiled bpsh, not a console-script wrapper: the project's wheel,
built offline from this checkout (setup.py's build hook), installed into a fresh virtualenv; its bpsh runs a
job on a simulated node, and hands what it leaves to the Python client to the beoboot of that virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from master_helpers import simulated_cluster

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root"),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the virtualenv it was installed into)."""
    work = tmp_path_factory.mktemp("pip")
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(work), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = work.glob("beoboot-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    return wheel, venv


def test_the_wheel_holds_the_compiled_bpsh_and_no_wrapper(installed):
    wheel, _ = installed
    assert wheel.name.endswith("-linux_x86_64.whl")  # a compiled program: this platform's wheel
    with zipfile.ZipFile(wheel) as archive:
        (script,) = [name for name in archive.namelist() if name.endswith(".data/scripts/bpsh")]
        assert archive.read(script)[:4] == b"\x7fELF"
        (entry_points,) = [name for name in archive.namelist() if name.endswith("entry_points.txt")]
        commands = archive.read(entry_points).decode().splitlines()
    assert "bpstat = beoboot.master.cli:bpstat_main" in commands and not [c for c in commands if c.startswith("bpsh ")]


def test_the_installed_bpsh_runs_a_job_and_falls_back_to_its_own_beoboot(installed, tmp_path):
    _, venv = installed
    bpsh = venv / "bin" / "bpsh"
    assert bpsh.read_bytes()[:4] == b"\x7fELF"
    with simulated_cluster(tmp_path) as master:
        env = {**os.environ, "BEOSERV_SOCKET": str(master.bpsh_socket)}
        result = subprocess.run([str(bpsh), "0", "sh", "-c", "echo ran; exit 4"], env=env, capture_output=True)
        assert (result.returncode, result.stdout) == (4, b"ran\n"), result.stderr
    # -h is the Python client's: the one installed in this virtualenv (marked here), not the checkout's
    (client,) = venv.glob("lib/python3*/site-packages/beoboot/master/bpsh/client.py")
    client.write_text(client.read_text() + '\nUSAGE = "the installed client"\n')
    result = subprocess.run([str(bpsh), "-h"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "the installed client\n"), result.stderr
