"""The in-image Python runtime (beoboot.resolve.pyruntime) and the minimal agent entry (agent/).

Fast tests: the parsers and the agent's dry run on the build host. The integration test builds the
runtime from sysroot `/`, lays it out with the interpreter's ELF closure (from `ldd`, test only) in a
tmp dir, and runs the agent and a real request of its HTTP client (agent.httpclient) inside a chroot of it.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from agent import init
from agent.config import AgentConfig
from agent.system import console, mounts
from beoboot.errors import SysrootError
from beoboot.resolve import pyruntime
from beoboot.resolve.sysroot import Sysroot

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {name: ROOT / name for name in ("agent", "stage1", "stage2", "stage3")}
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


# -- parsers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python3.11", (3, 11)),
        ("python3.9", (3, 9)),
        ("python3", None),
        ("python3.11-config", None),
        ("python311.zip", None),
    ],
)
def test_parse_python_dir_name(name, expected):
    assert pyruntime.parse_python_dir_name(name) == expected


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("import os, a.b", "m", False, [("os", True), ("a.b", True)]),
        ("from a import b", "m", False, [("a", True), ("a.b", False)]),
        ("from . import x", "p.q", False, [("p.x", True)]),
        ("from . import x", "p", True, [("p.x", True)]),
        ("from .mod import y", "p.q", False, [("p.mod", True), ("p.mod.y", False)]),
        ("from ..up import z", "p.q.r", False, [("p.up", True), ("p.up.z", False)]),
        ("from x import *", "m", False, [("x", True)]),
        ("def f():\n    import late\n", "m", False, [("late", True)]),
    ],
)
def test_imports_of(source, module, is_package, expected):
    assert pyruntime.imports_of(source, module, is_package) == expected


def test_excludes_cover_submodules():
    assert pyruntime.is_excluded("email.mime.text", {"email.mime": ""})
    assert not pyruntime.is_excluded("email.mimetypes", {"email.mime": ""})


def test_write_zip_is_deterministic_and_sorted():
    members = {"b.pyc": b"2", "a/__init__.pyc": b"1"}
    first = pyruntime.write_zip(members)
    assert first == pyruntime.write_zip(dict(reversed(list(members.items()))))
    infos = zipfile.ZipFile(io.BytesIO(first)).infolist()
    assert [i.filename for i in infos] == ["a/__init__.pyc", "b.pyc"]
    assert {i.date_time for i in infos} == {pyruntime.ZIP_DATE_TIME}


def test_write_zip_stored_leaves_the_bytes_to_the_image_compressor():
    members = {"a.pyc": b"x" * 1000}
    infos = zipfile.ZipFile(io.BytesIO(pyruntime.write_zip(members, zipfile.ZIP_STORED))).infolist()
    assert [(i.compress_type, i.compress_size) for i in infos] == [(zipfile.ZIP_STORED, 1000)]
    infos = zipfile.ZipFile(io.BytesIO(pyruntime.write_zip(members))).infolist()
    assert infos[0].compress_type == zipfile.ZIP_DEFLATED  # the master's stdlib zip for jobs travels as it is


COMPILED_SOURCE = '''"""Module doc."""
from __future__ import annotations


class K:
    """Class doc."""

    def f(self):
        """Only a docstring."""


def g():
    """Function doc."""
    assert 1 + 1 == 2, "kept: asserts are code"
    return (1 +
            2) / 0
'''


def run_pyc(pyc: bytes, tmp_path: Path) -> str:
    (tmp_path / "m.pyc").write_bytes(pyc)
    script = (
        "import sys, marshal; code = marshal.loads(open(sys.argv[1], 'rb').read()[16:]); ns = {}; "
        "exec(code, ns); print(repr(ns.get('__doc__')), repr(ns['K'].__doc__), repr(ns['K'].f.__doc__), "
        "repr(ns['g'].__doc__), ns['K']().f()); ns['g']()"
    )
    done = subprocess.run([sys.executable, "-c", script, tmp_path / "m.pyc"], capture_output=True, text=True)
    return done.stdout + done.stderr


def test_compiled_sysroot_modules_lose_docstrings_and_column_positions_not_code(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(COMPILED_SOURCE)
    jobs = [
        pyruntime.CompileJob(source, "/usr/lib/python311.zip/m.py", strip_docstrings=True),
        pyruntime.CompileJob(source, "/usr/lib/python311.zip/m.py", strip_docstrings=False),
    ]
    stripped, kept = pyruntime.compile_modules(jobs, tmp_path)
    assert stripped[4:8] == kept[4:8] == b"\x01\x00\x00\x00"  # PEP 552: hash-based, unchecked
    assert len(stripped) < len(kept)
    out = run_pyc(stripped, tmp_path)
    assert "None None None None None" in out
    # the line is named, as the file in the image, but no ^^^ marks a column: none were kept
    assert 'File "/usr/lib/python311.zip/m.py", line 15, in g' in out and "ZeroDivisionError" in out
    assert "^^^" not in out
    out = run_pyc(kept, tmp_path)
    assert "'Module doc.' 'Class doc.' 'Only a docstring.' 'Function doc.' None" in out


def test_init_script_sets_hash_seed_and_no_site():
    text = pyruntime.render_init("/usr/bin/python3.11", "stage2.pxe").decode()
    assert text.startswith("#!/usr/bin/python3.11 -S\n")
    assert "PYTHONHASHSEED" in text and "-I" not in text and "-E" not in text
    assert "from stage2.pxe import main as program" in text
    compile(text, "/init", "exec")


def test_find_sysroot_python_in_empty_tree_says_what_to_install(tmp_path):
    with pytest.raises(SysrootError, match="python3"):
        pyruntime.find_sysroot_python(Sysroot(tmp_path))


def test_find_sysroot_python_reads_layout_of_fake_tree(tmp_path):
    (tmp_path / "usr/lib/python3.11/lib-dynload").mkdir(parents=True)
    (tmp_path / "usr/lib/python3.11/os.py").write_text("")
    (tmp_path / "usr/bin").mkdir(parents=True)
    shutil.copy("/usr/bin/python3.11", tmp_path / "usr/bin/python3.11")  # any ELF with PyInit_ symbols
    (tmp_path / "usr/bin/python3").symlink_to("python3.11")
    python = pyruntime.find_sysroot_python(Sysroot(tmp_path))
    assert python.version == (3, 11)
    assert python.interpreter == "/usr/bin/python3.11"
    assert python.interpreter_links == ("/usr/bin/python3",)
    assert python.zip_path == "/usr/lib/python311.zip"
    assert {"posix", "_socket", "sys"} <= python.builtins


# -- the agent -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, init.Options()),
        (["--dry-run"], {}, init.Options(dry_run=True)),
        ([], {"BEOBOOT_DRY_RUN": "1"}, init.Options(dry_run=True)),
        ([], {"BEOBOOT_DRY_RUN": "0"}, init.Options()),
        (["--config", "/x.json", "single"], {}, init.Options(config_path="/x.json")),
        (["--config=/y.json"], {}, init.Options(config_path="/y.json")),
    ],
)
def test_parse_options(argv, env, expected):
    assert init.parse_options(argv, env) == expected


@pytest.mark.parametrize(("stage", "number"), [("stage1", 1), ("stage2", 2), ("stage3", 3)])
def test_stage_number(stage, number):
    assert init.stage_number(stage) == number


def test_stage_number_rejects_unknown_stage():
    with pytest.raises(init.AgentError, match="'stage9'"):
        init.stage_number("stage9")


def test_parse_mount_targets():
    text = "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n/dev/sda1 /mnt/with\\040space ext4 rw 0 0\n\n"
    assert mounts.parse_mount_targets(text) == {"/proc", "/sys", "/mnt/with space"}


def write_config(path: Path, stage: str = "stage2", power_off: bool = True) -> Path:
    config = AgentConfig(
        version="9.9", stage=stage, program="stage2.pxe", kernel_version="6.1", power_off_when_up=power_off
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json())
    return path


def test_agent_dry_run_prints_markers_and_makes_no_syscalls(tmp_path, capfd, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a dry run must not call libc")

    monkeypatch.setattr("agent.system.syscalls.libc", forbidden)
    config = write_config(tmp_path / "agent.json", stage="stage3")
    assert init.main(["--dry-run", "--config", str(config)]) == 0
    out = capfd.readouterr().out
    assert "beoboot: stage 3 agent up\n" in out
    assert f"beoboot: agent version {init.agent.__version__}\n" in out
    assert "would reboot(LINUX_REBOOT_CMD_POWER_OFF)" in out


def test_agent_reports_missing_config_and_returns_when_not_pid1(tmp_path, capfd):
    assert init.main(["--dry-run", "--config", str(tmp_path / "missing.json")]) == 1
    assert f"cannot read agent config {tmp_path / 'missing.json'}" in capfd.readouterr().out


def test_console_say_survives_closed_fd(monkeypatch):
    monkeypatch.setattr(console, "_fd", 987)
    console.say("nobody hears this")  # must not raise


# -- the runtime in a chroot -------------------------------------------------------------------------

# Runs inside the chroot: everything the agent imports at run time, plus a real request of its HTTP client.
CHECK_SCRIPT = r"""
import os, sys, importlib
port, module_list = int(sys.argv[1]), sys.argv[2]
print("prefix", sys.prefix, sys.exec_prefix)
print("path", sys.path)
assert os.environ.get("PYTHONHASHSEED") == "0", os.environ
import agent.init, agent.system.console, agent.system.mounts, agent.system.syscalls, agent.config
import ctypes
assert ctypes.CDLL(None, use_errno=True).getpid() == os.getpid()
from agent.httpclient import Connection
response = Connection(10).request("GET", f"http://127.0.0.1:{port}/hello")
assert response.status == 200 and response.text() == "hello from the build host", response.text()
print("GET OK", response.header("Server"))
for name, module in sorted(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    # frozen modules carry a __file__ in the stdlib directory that need not exist
    frozen = spec is not None and spec.origin in ("frozen", "built-in")
    where = "built-in/frozen" if frozen else getattr(module, "__file__", None) or "built-in/frozen"
    if name == "__main__":
        continue
    print("loaded", name, where)
failures = 0
for name in open(module_list).read().split():
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures += 1
        print("IMPORTFAIL", name, type(exc).__name__, exc)
print("CHECK DONE", failures)
"""


class HelloHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 -- the name http.server calls
        body = b"hello from the build host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def ldd_closure(paths: list[str]) -> set[str]:
    """Test-only ELF closure via the host's ldd (the image builder reads ELF itself)."""
    libs: set[str] = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        for match in re.finditer(r"(/\S+) \(0x", out):
            libs.add(match.group(1))
    return libs


def lay_out(runtime: pyruntime.PythonRuntime, root: Path) -> None:
    def copy(path: str) -> None:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)

    copy(runtime.interpreter)
    for link in runtime.interpreter_links:
        (root / link.lstrip("/")).symlink_to(os.path.basename(runtime.interpreter))
    extension_paths = [path for path, _ in runtime.extensions]
    for path in extension_paths:
        copy(path)
    for lib in ldd_closure([runtime.interpreter, *extension_paths]):
        copy(lib)
    (root / runtime.zip_path.lstrip("/")).write_bytes(runtime.zip_bytes)
    init_file = root / runtime.init_path.lstrip("/")
    init_file.write_bytes(runtime.init_bytes)
    init_file.chmod(0o755)


@pytest.fixture(scope="module")
def runtime():
    return pyruntime.build_runtime(Sysroot("/"), "stage3.supervisor", PACKAGES)


needs_root_chroot = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(CHROOT) or not Path("/usr/bin/python3.11").exists(),
    reason="needs root, chroot and the sysroot python3.11",
)


@pytest.mark.integration
@needs_root_chroot
def test_runtime_is_deterministic(runtime):
    again = pyruntime.build_runtime(Sysroot("/"), "stage3.supervisor", PACKAGES)
    assert again.zip_bytes == runtime.zip_bytes
    assert again == runtime
    # ... and in another process, which has imported other things than pytest has (marshal's output
    # depends on the compiling process's state; beoboot compiles in a clean child to avoid that)
    other_process = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from beoboot.resolve.sysroot import Sysroot; "
            "from pathlib import PosixPath; from beoboot.resolve.pyruntime import build_runtime; "
            f"sys.stdout.buffer.write(build_runtime(Sysroot('/'), 'stage3.supervisor', {PACKAGES!r}).zip_bytes)",
        ],
        capture_output=True,
        check=True,
        cwd=ROOT,
    )
    assert other_process.stdout == runtime.zip_bytes
    names = zipfile.ZipFile(io.BytesIO(runtime.zip_bytes)).namelist()
    assert names == sorted(names)
    assert "agent/init.pyc" in names and "agent/httpclient.pyc" in names and "encodings/utf_8.pyc" in names
    assert "http/client.pyc" in names and not any(name.startswith("ssl.") for name in names)
    # the agent's HTTP is the standard library's: none of requests and what it brings
    third_party = ("requests/", "urllib3/", "idna/", "chardet/", "charset_normalizer/", "certifi/", "six.")
    assert not any(name.startswith(third_party) for name in names)
    extensions = [os.path.basename(path) for path, _ in runtime.extensions]
    assert any(name.startswith("_ctypes.") for name in extensions)
    assert not any(name.startswith(("_ssl.", "_hashlib.")) for name in extensions)
    print(f"\nzip {len(runtime.zip_bytes)} bytes, {len(runtime.modules)} modules; extensions: {extensions}")


@pytest.mark.integration
@needs_root_chroot
def test_runtime_runs_agent_and_its_http_client_in_chroot(runtime, tmp_path):
    root = tmp_path / "root"
    lay_out(runtime, root)
    write_config(root / "etc/beoboot/agent.json", stage="stage1")
    (root / "check.py").write_text(CHECK_SCRIPT)
    (root / "modules.txt").write_text("\n".join(runtime.modules))
    # No PYTHONHOME/PYTHONPATH and no PYTHONHASHSEED: /init must find its stdlib and set the seed itself.
    clean_env = {"PATH": "/usr/bin"}

    agent_run = subprocess.run(
        [CHROOT, str(root), "/init", "--dry-run"], capture_output=True, text=True, env=clean_env, timeout=60
    )
    assert agent_run.returncode == 0, agent_run.stdout + agent_run.stderr
    assert "beoboot: stage 1 agent up\n" in agent_run.stdout
    assert "beoboot: agent version " in agent_run.stdout
    assert "Could not find platform" not in agent_run.stderr, agent_run.stderr

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HelloHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check = subprocess.run(
            [CHROOT, str(root), runtime.interpreter, "-S", "/check.py", str(server.server_port), "/modules.txt"],
            capture_output=True,
            text=True,
            env={**clean_env, "PYTHONHASHSEED": "0"},
            timeout=120,
        )
    finally:
        server.shutdown()
    output = check.stdout + check.stderr
    assert check.returncode == 0, output
    assert "GET OK" in check.stdout, output
    assert "Could not find platform" not in check.stderr, check.stderr
    assert "prefix /usr /usr" in check.stdout
    # Everything the run loaded came from the zip, lib-dynload or the interpreter itself.
    for line in check.stdout.splitlines():
        if line.startswith("loaded "):
            _, name, where = line.split(" ", 2)
            assert where == "built-in/frozen" or where.startswith(
                (runtime.zip_path, "/usr/lib/python3.11/lib-dynload/")
            ), line
    # A module in the zip may fail to import only because of a module left out on purpose.
    failures = [line for line in check.stdout.splitlines() if line.startswith("IMPORTFAIL")]
    for line in failures:
        assert any(f"'{ex}'" in line for ex in pyruntime.DEFAULT_EXCLUDES), line
    print(f"\nimport failures caused by left-out modules: {len(failures)}")
    for line in failures:
        print(" ", line)


@pytest.mark.integration
@needs_root_chroot
def test_ssl_is_an_extra_module():
    with_ssl = pyruntime.build_runtime(Sysroot("/"), "stage3.supervisor", PACKAGES, extra_modules=("ssl",))
    assert "ssl" in with_ssl.modules
    assert any(os.path.basename(path).startswith("_ssl.") for path, _ in with_ssl.extensions)


def test_unknown_extra_module_is_an_error(tmp_path):
    with pytest.raises(SysrootError, match="'no_such_module_xyz'"):
        pyruntime.build_runtime(Sysroot("/"), "stage3.supervisor", PACKAGES, extra_modules=("no_such_module_xyz",))


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs the sysroot python3.11")
def test_each_image_carries_only_its_own_stage_program():
    """/init imports the stage's program; the walk from there decides what the image carries."""
    own = {}
    for program in ("stage1.booster", "stage2.pxe", "stage3.supervisor"):
        runtime = pyruntime.build_runtime(Sysroot("/"), program, PACKAGES)
        own[program] = {m for m in runtime.modules if m.partition(".")[0] in PACKAGES}
        assert f"from {program} import main as program" in runtime.init_bytes.decode()
    assert "stage1.kexec" in own["stage1.booster"] and "stage2.switchroot" in own["stage2.pxe"]
    for program in ("stage1.booster", "stage2.pxe"):
        assert not {m for m in own[program] if m.startswith("stage3")}, program
        assert "agent.net.dhcp" in own[program]
    assert not {m for m in own["stage3.supervisor"] if m.startswith(("stage1", "stage2"))}
    assert {"stage3.jobrunner", "stage3.libcache", "stage3.launcher"} <= own["stage3.supervisor"]


# -- a sysroot whose Python cannot be read ------------------------------------------------------------------


def fake_python(root: Path, modules: dict[str, bytes]) -> Sysroot:
    """A sysroot with python3.11 (the build host's binary, for its PyInit_ symbols) and these stdlib files."""
    lib = root / "usr/lib/python3.11"
    (lib / "lib-dynload").mkdir(parents=True)
    (lib / "os.py").write_text("")
    for relative, data in modules.items():
        (lib / relative).parent.mkdir(parents=True, exist_ok=True)
        (lib / relative).write_bytes(data)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(os.path.realpath(sys.executable), root / "usr/bin/python3.11")
    return Sysroot(root)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"import codecs\nprint 'Python 2'\n", "line 2: invalid syntax at a string: not Python 3"),
        (b"import codecs\nx = '\xff'\n", "line 2: not valid utf-8"),
        (b"x = f'{unclosed'\n", "line 1: unterminated string"),
    ],
)
def test_a_stdlib_module_that_cannot_be_read_is_one_line_naming_it_and_what_to_do(tmp_path, data, what):
    sysroot = fake_python(tmp_path, {"encodings/__init__.py": data})
    with pytest.raises(SysrootError) as raised:
        pyruntime.build_runtime(sysroot, "stage3.supervisor", PACKAGES)
    message = str(raised.value)
    assert "\n" not in message
    assert f"Python module /usr/lib/python3.11/encodings/__init__.py, {what}" in message
    assert "reinstall the package that owns it" in message


def test_an_interpreter_that_is_no_elf_file_is_one_line_naming_it(tmp_path):
    sysroot = fake_python(tmp_path, {})
    (tmp_path / "usr/bin/python3.11").write_bytes(b"#!/bin/sh\necho not python\n")
    with pytest.raises(SysrootError) as raised:
        pyruntime.find_sysroot_python(sysroot)
    assert "\n" not in str(raised.value)
    assert "cannot read the Python interpreter /usr/bin/python3.11" in str(raised.value)
    assert "reinstall python3-minimal in the sysroot" in str(raised.value)


def test_imports_in_functions_no_image_calls_are_not_followed_unless_also_at_top_level(tmp_path):
    sysroot = fake_python(
        tmp_path,
        {
            "random.py": b"import os\ndef _test_generator():\n    from statistics import stdev, fmean\n",
            "statistics.py": b"import decimal\n",
            "decimal.py": b"",
            "gzip.py": b"import argparse\ndef main():\n    import argparse\n",  # at top level too: followed
            "argparse.py": b"",
        },
    )
    python = pyruntime.find_sysroot_python(sysroot)
    graph = pyruntime.find_modules(sysroot, python, PACKAGES, "import random, gzip\n")
    assert {"random", "gzip", "argparse", "os"} <= set(graph.modules)
    assert not {"statistics", "statistics.stdev", "decimal"} & (set(graph.modules) | set(graph.missing))
    mine = pyruntime.find_modules(sysroot, python, PACKAGES, "import random, statistics\n")  # asked for: there
    assert {"statistics", "decimal"} <= set(mine.modules)


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs the sysroot python3.11")
def test_stage_runtimes_leave_out_what_only_self_tests_and_command_lines_import():
    for program in ("stage1.booster", "stage2.pxe", "stage3.supervisor"):
        runtime = pyruntime.build_runtime(Sysroot("/"), program, PACKAGES)
        assert {"random", "gzip"} <= set(runtime.modules), program
        assert not {"statistics", "decimal", "fractions", "argparse"} & set(runtime.modules), program
        assert not [path for path, _ in runtime.extensions if "_decimal" in path], program


def test_the_build_host_compiles_for_its_own_version_only(tmp_path):
    sysroot = fake_python(tmp_path, {})
    python = pyruntime.find_sysroot_python(sysroot)
    assert pyruntime.find_compiler(sysroot, python) == pyruntime.host_compiler()
    other = dataclasses.replace(python, version=(3, 99))
    assert pyruntime.find_compiler(sysroot, other) is None  # its python3.11 is not 3.99: not trusted


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs the sysroot python3.11")
def test_runtimes_of_one_build_share_scans_and_bytecode(runtime, monkeypatch):
    """A build's images walk and compile each module once; each image still gets exactly its own modules,
    with the bytecode a runtime built alone has."""
    compiled: list[int] = []
    real = pyruntime.compile_modules
    monkeypatch.setattr(pyruntime, "compile_modules", lambda jobs, *a: compiled.append(len(jobs)) or real(jobs, *a))
    cache = pyruntime.RuntimeCache(Sysroot("/"))
    first = pyruntime.build_runtime(Sysroot("/"), "stage2.pxe", PACKAGES, cache=cache)
    shared = pyruntime.build_runtime(Sysroot("/"), "stage3.supervisor", PACKAGES, cache=cache)
    assert shared.modules == runtime.modules
    assert shared.zip_bytes == runtime.zip_bytes
    assert compiled[0] == len(first.modules) and compiled[1] < len(shared.modules) / 2, compiled
