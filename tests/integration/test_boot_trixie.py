"""A sysroot of another Debian release builds and boots: trixie, as `build.py setup` debootstraps it, has
Python 3.13 (PEP 701 f-strings the build host's 3.11 cannot parse), Linux 6.12 with .ko.xz modules and a
merged /usr. Its images carry its own interpreter, with bytecode its own interpreter compiled, and a node
boots from the ISO through stage 1, kexec and stage 2 to a stage-3 agent the master knows, under QEMU (TCG).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest
import sysroots
from conftest import run_beoboot
from image_parts import image_files
from master_helpers import MasterProcess, build_for_master
from nodes import bpstat, node_row
from servers import free_port
from vm import BackgroundVM

from beoboot.resolve import pyruntime
from beoboot.resolve.sysroot import Sysroot
from beoboot.stages import PROGRAM_PACKAGES, PROJECT_ROOT
from beoboot.vm import qemu

pytestmark = pytest.mark.integration

TRIXIE = sysroots.sysroot("trixie")
if TRIXIE is None:
    pytest.skip(sysroots.SKIP_REASON.format(suite="trixie"), allow_module_level=True)
PROGRAMS = {"stage1": "stage1.booster", "stage2": "stage2.pxe", "stage3": "stage3.supervisor"}


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def out(tmp_path_factory, port):
    return build_for_master(tmp_path_factory, port, f'sysroot = "{TRIXIE}"\n')


def sysroot_python() -> tuple[str, bytes]:
    """The trixie Python's version (3.13) and the magic number its bytecode starts with, read from its files."""
    stdlib = sorted(TRIXIE.glob("usr/lib/python3.*/os.py"))[-1].parent
    source = (stdlib / "importlib/_bootstrap_external.py").read_text()
    magic = int(re.search(r"MAGIC_NUMBER = \((\d+)\)\.to_bytes\(2, 'little'\)", source).group(1))
    return stdlib.name.removeprefix("python"), magic.to_bytes(2, "little") + b"\r\n"


def test_the_images_carry_the_sysroots_python_compiled_by_itself_and_its_kernel(out):
    version, magic = sysroot_python()
    assert version == "3.13"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernel_version"].startswith("6.12.")
    artifacts = {a["name"]: out / a["path"] for a in manifest["artifacts"]}
    for stage in PROGRAMS:
        files = image_files(artifacts[stage])
        tag = version.replace(".", "")
        assert f"/usr/bin/python{version}" in files
        assert not any("python3.11" in path for path in files), stage
        stdlib = zipfile.ZipFile(io.BytesIO(files[f"/usr/lib/python{tag}.zip"]))
        names = stdlib.namelist()
        assert "encodings/__init__.pyc" in names and not any(name.endswith(".py") for name in names)
        assert {stdlib.read(name)[:4] for name in names} == {magic}  # compiled by python3.13 itself
        assert any(path.startswith(f"/usr/lib/python{version}/lib-dynload/") for path in files)
        if stage != "stage3":  # NIC drivers, decompressed from the sysroot's .ko.xz
            modules = [path for path in files if path.endswith(".ko")]
            assert any("/e1000/" in path for path in modules), stage
            assert all(path.startswith("/usr/lib/modules/6.12.") for path in modules)
            assert all(files[path][:4] == b"\x7fELF" for path in modules)


def test_bytecode_from_the_sysroots_python_is_the_same_on_every_build():
    packages = {name: PROJECT_ROOT / name for name in PROGRAM_PACKAGES}
    first = pyruntime.build_runtime(Sysroot(TRIXIE), "stage3.supervisor", packages)
    again = pyruntime.build_runtime(Sysroot(TRIXIE), "stage3.supervisor", packages)
    assert first.zip_bytes == again.zip_bytes
    assert first.interpreter == "/usr/bin/python3.13"


def test_the_runtime_holds_sources_where_nothing_here_compiles_for_the_sysroot(monkeypatch):
    """A sysroot Python that cannot run here (another architecture) and is not the build host's version."""
    monkeypatch.setattr(pyruntime, "sysroot_compiler", lambda sysroot, python: None)
    packages = {name: PROJECT_ROOT / name for name in PROGRAM_PACKAGES}
    runtime = pyruntime.build_runtime(Sysroot(TRIXIE), "stage3.supervisor", packages)
    names = zipfile.ZipFile(io.BytesIO(runtime.zip_bytes)).namelist()
    assert runtime.zip_path == "/usr/lib/python313.zip"
    assert "encodings/__init__.py" in names and "dataclasses.py" in names
    assert not any(name.endswith(".pyc") for name in names)


def test_iso_boots_stage1_which_kexecs_into_stage2_then_stage3_on_the_sysroots_python(out, port, tmp_path):
    master = MasterProcess(out, tmp_path / "nodes.db", tmp_path / "beoserv.log", port=port).start()
    try:
        cmd = qemu.qemu_command(extra=["-cdrom", str(out / "beoboot.iso"), "-nic", "user,model=e1000"])
        with BackgroundVM(cmd, tmp_path / "iso.console") as node:
            first = node.wait_for(r"beoboot: stage 1 agent up\nbeoboot: agent version \S+\nbeoboot: kernel 6\.12\.")
            node.wait_for(r"kexec into the stage 2 kernel", after=first.end())
            second = node.wait_for(r"beoboot: stage 2 agent up\nbeoboot: agent version \S+\nbeoboot: kernel 6\.12\.")
            node.wait_for("beoboot: stage 3 ready: node 0 up", after=second.end(), timeout=300)
            console = node.console()
            assert "Could not find platform" not in console  # the interpreter found its stdlib zip
            assert "Traceback" not in console and "Kernel panic" not in console
        assert node_row(master, 0)["state"] == "up"
        timeline = bpstat(master, "--timeline", "0")
        assert "stage1_start" in timeline and "kexec" in timeline and "stage3_ready" in timeline
    finally:
        master.stop()


def test_a_sysroot_whose_python_cannot_be_read_is_one_line_naming_the_file(tmp_path):
    """A damaged stdlib module stops the build with one line: the file, and what to do."""
    broken = tmp_path / "sysroot"
    subprocess.run(["cp", "-al", str(TRIXIE), str(broken)], check=True)  # hard links: nothing copied
    module = sorted(broken.glob("usr/lib/python3.*/encodings/__init__.py"))[0]
    module.unlink()  # a file of its own, so the shared sysroot stays whole
    module.write_bytes(b"import codecs\nprint 'a Python 2 file'\n")
    site = tmp_path / "site.toml"
    site.write_text(f'[build]\nsysroot = "{broken}"\n')
    try:
        done = run_beoboot("build", "-q", "-c", site, "-o", tmp_path / "out", check=False)
    finally:
        shutil.rmtree(broken, ignore_errors=True)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    relative = "/" + os.path.relpath(module, broken)
    assert lines[0].startswith("beoboot-build: error: ")
    assert f"{relative}, line 2: invalid syntax" in lines[0] and "reinstall the package" in lines[0]
