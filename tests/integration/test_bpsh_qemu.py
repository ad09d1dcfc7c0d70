"""bpsh against a node booted in QEMU (TCG) with the real master: the node runs the master's exact programs
out of its libcache, chrooted in its environment root. The node reaches the master at 10.0.2.2."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from master_helpers import bpsh_argv, run_bpsh, shared_port
from nodes import node_row, node_up

from agent import __version__ as agent_version
from stage3.names import is_host_name

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(shared_out, tmp_path_factory):
    with node_up(shared_out, shared_port(), tmp_path_factory.mktemp("qemu-bpsh")) as (master, _):
        yield master


bpsh = run_bpsh


def envroot_skeleton(out: Path) -> set[str]:
    """The top-level names of the envroot image: what the node's environment root holds before any job."""
    listing = subprocess.run(
        f"zcat {out / 'envroot.cpio.gz'} | cpio -t --quiet", shell=True, check=True, capture_output=True, text=True
    ).stdout
    return {line.split("/")[0] for line in listing.split()} - {"."}


def test_first_job_sees_only_what_jobs_brought(node, shared_out):
    skeleton = envroot_skeleton(shared_out)
    assert not skeleton & {"usr", "bin", "lib", "lib64"}  # no programs before the first job
    result = bpsh(node, "0", "ls", "-a", "/")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split()) - {".", "..", ".libcache"}
    assert "usr" in listed and listed - skeleton <= {"usr", "bin", "lib", "lib64"}  # ls and its libraries


def test_python_prints_42(node):
    result = bpsh(node, "0", "/usr/bin/python3", "-c", "print(6*7)")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr


def test_python_imports_the_masters_stdlib_and_extension_modules(node):
    program = (
        "import json, ssl, sqlite3\nprint(json.dumps({'ssl': ssl.OPENSSL_VERSION, 'sqlite': sqlite3.sqlite_version}))"
    )
    result = bpsh(node, "0", "/usr/bin/python3", "-c", program)
    on_master = subprocess.run(["/usr/bin/python3", "-c", program], capture_output=True, text=True, check=True)
    assert (result.returncode, result.stdout) == (0, on_master.stdout), result.stderr


def test_a_virtualenv_program_brings_its_modules_and_packages(node, tmp_path):
    """The project's own venv: its pyvenv.cfg, jinja2 and markupsafe (with its C extension), and the
    program's helper module beside it; the same output as on the master."""
    (tmp_path / "helper.py").write_text("NAME = 'node'\n")
    (tmp_path / "main.py").write_text(
        "import helper, jinja2, markupsafe, sys\n"
        "print(jinja2.Template('{{ n|e }}').render(n='<' + helper.NAME + '>'),"
        " markupsafe._speedups.__name__, sys.prefix)\n"
    )
    venv_python = os.path.join(sys.prefix, "bin", "python")
    on_master = subprocess.run([venv_python, "main.py"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert on_master.stdout.startswith("&lt;node&gt; markupsafe._speedups ")
    result = bpsh(node, "0", venv_python, "main.py", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, on_master.stdout), result.stderr


def test_lspci_names_the_nodes_devices_from_the_masters_pci_ids(node):
    result = bpsh(node, "0", "lspci")
    assert result.returncode == 0, result.stderr
    assert "Virtio" in result.stdout and "Ethernet controller" in result.stdout, result.stdout


def test_a_files_owner_and_acl_are_kept_on_the_node(node, tmp_path):
    """The node's environment root is a tmpfs: it holds the master's owner and ACL there too."""
    shared = tmp_path / "shared"
    shared.write_text("x")
    os.chown(shared, 65534, 65534)
    shared.chmod(0o640)
    subprocess.run(["setfacl", "-m", "u:1234:r", str(shared)], check=True)
    result = bpsh(node, "--cache", str(shared), "0", "getfacl", "-cpn", str(shared))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["user::r--", "user:1234:r--", "group::r--", "mask::r--", "other::---"]
    owner = bpsh(node, "0", "stat", "-c", "%u:%g %a", str(shared))
    assert owner.stdout == "65534:65534 440\n", owner.stderr


def test_perl_with_its_essential_modules_in_the_users_locale(node):
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": ""}
    result = subprocess.run(
        bpsh_argv(node.bpsh_socket, "0", "perl", "-e", "use strict; use POSIX; print floor(2.5)"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "2", "")  # no "Setting locale failed"
    dumper = bpsh(node, "0", "perl", "-MData::Dumper", "-e", "$Data::Dumper::Terse = 1; print Dumper(7)")
    assert (dumper.returncode, dumper.stdout) == (0, "7\n"), dumper.stderr  # beyond perl-base, XS: no --cache


def test_shared_memory_ptys_and_a_terminal_as_on_an_installed_machine(node):
    """/dev/shm (POSIX semaphores: multiprocessing, MPI's shared-memory transport) and /dev/pts are mounted
    in the environment root; top finds the terminfo of $TERM."""
    program = (
        "import multiprocessing, os, pty\nwith multiprocessing.Pool(2) as pool: print(pool.map(abs, [-1, -2]))\n"
        "print(os.ttyname(pty.openpty()[1]).rstrip('0123456789'))"
    )
    result = bpsh(node, "0", "/usr/bin/python3", "-c", program)
    assert (result.returncode, result.stdout) == (0, "[1, 2]\n/dev/pts/\n"), result.stderr
    top = subprocess.run(
        bpsh_argv(node.bpsh_socket, "0", "top", "-bn1"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TERM": "xterm"},
    )
    assert top.returncode == 0 and "PID" in top.stdout, top.stderr


def test_bpstat_shows_the_nodes_load_and_memory(node):
    """From the node's own /proc, with its heartbeats: QEMU gives the guest 1 GiB."""
    deadline = time.monotonic() + 30
    while (load := node_row(node, 0)["load"]) is None:
        assert time.monotonic() < deadline, "no heartbeat carried the node's load"
        time.sleep(1)
    assert 700 << 10 < load["mem_total_kib"] <= 1 << 20 and 0 < load["mem_available_kib"] < load["mem_total_kib"]
    assert load["load1"] >= 0


def test_bpstat_shows_what_the_node_booted(node, shared_out):
    """Its kernel, stage 3 as stage 2 fetched it and the environment root by its pin: the build's own."""
    manifest = json.loads((shared_out / "manifest.json").read_text())
    hashes = {a["name"]: a["sha256"] for a in manifest["artifacts"]}
    row = node_row(node, 0)
    assert row["booted"] == {
        "kernel": manifest["kernel_version"],
        "images": {"stage3": hashes["stage3"], "envroot": hashes["envroot"]},
    }
    assert (row["agent_version"], row["next_boot_changes"]) == (agent_version, [])


def test_exit_status_of_a_shell(node):
    assert bpsh(node, "0", "sh", "-c", "exit 3").returncode == 3


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc on the master")
def test_c_program_with_its_own_library(node, tmp_path):
    (tmp_path / "greet.c").write_text('const char *greet(void) { return "built on the master"; }\n')
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n"
    )
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libgreet.so"), str(tmp_path / "greet.c")], check=True
    )
    subprocess.run(
        [
            "gcc",
            "-o",
            str(tmp_path / "hello"),
            str(tmp_path / "main.c"),
            f"-L{tmp_path}",
            "-lgreet",
            f"-Wl,-rpath,{tmp_path}",
        ],
        check=True,
    )
    result = bpsh(node, "0", str(tmp_path / "hello"))
    assert (result.returncode, result.stdout) == (0, "built on the master\n"), result.stderr


def test_sigint_through_bpsh_ends_the_job_with_130(node):
    assert bpsh(node, "0", "/bin/true").returncode == 0  # sleep's libraries are cached by now; warm the path
    job = subprocess.Popen(bpsh_argv(node.bpsh_socket, "0", "sleep", "100"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listing = subprocess.run(
            [sys.executable, "-m", "beoboot.master.cli", "bps", "--master", node.url], capture_output=True, text=True
        ).stdout
        if "sleep 100" in listing and "running" in listing:
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGINT)
    assert job.wait(60) == 130


def test_a_job_resolves_its_own_node_and_the_master_by_name(node):
    """The environment root resolves hosts from files only: its /etc/hosts names this node (nN, .N) and
    the master (master, .-1), so a job asking for its own host's address gets it; `self` and `.-2` name the
    machine asking, as on Scyld."""
    assert bpsh(node, "0", "hostname").stdout == "n0\n"
    result = bpsh(node, "0", "getent", "hosts", "n0", ".-2", "master", ".-1")
    assert result.returncode == 0, result.stderr
    own, master = ["10.0.2.15", "n0", ".0", "self", ".-2"], ["10.0.2.2", "master", "master0", ".-1"]
    if is_host_name(socket.gethostname()):
        master.append(socket.gethostname())  # beoserv's own name (RegisterReply.master_hostname)
    assert [line.split() for line in result.stdout.splitlines()] == [own, own, master, master]
