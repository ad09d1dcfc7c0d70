"""The compiled bpsh (beoboot/master/bpsh/fast/bpsh.c) against the Python one (client.py), on one table of
command lines: the same request bytes to beoserv, the same descriptors, the same exit status, output and
errors; and for each line, which of the two decided it: the compiled client's FAST_PATH, or the Python
client it execs for everything else. Against a stand-in beoserv on a scratch socket: no root needed."""

from __future__ import annotations

import importlib.util
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from master_helpers import BPSH_SCRIPT, compiled_bpsh

from beoboot.master.bpsh import client
from beoboot.master.bpsh.fast.compile import compile_client

STATUS = 7  # what the stand-in answers: any status the clients must pass on
SOCK = "{sock}"  # in a case: the stand-in's socket path

# (the arguments, whether the compiled client runs them itself); the socket comes from $BEOSERV_SOCKET
CASES = [
    (("0", "/bin/true"), True),
    (("n[0-3]", "printf", "%s\\n", "a b"), True),  # argv-exact: an argument with a space stays one
    (("-n", "0", "cat"), True),
    (("-p", "-s", "0,1", "true"), True),
    (("-d", ".3", "true"), True),  # -d is -s too
    (("-np", "@up", "true"), True),
    (("-sdn", "@all", "true"), True),
    (("-b", "n[0-9]!n3", "uname"), True),
    (("-a", "hostname"), True),
    (("--all", "hostname"), True),
    (("--cache", "/etc/hosts", "--cache=/etc/passwd", "0", "true"), True),
    (("--cache=", "0", "true"), True),
    (("--socket", SOCK, "0", "true"), True),
    (("--socket=" + SOCK, "0", "true"), True),
    (("--", "0", "true"), True),
    (("--", "-odd", "true"), True),  # after --, a node set that starts with '-'
    # ssh's command rule: shell syntax in the first word, or an ssh option given
    (("0", "echo a; echo b | tr b c"), True),
    (("n3", " orted", "-mca", "ess", '"env"'), True),  # Open MPI's plm_rsh
    (("0", "", "x"), True),
    (("-oBatchMode=yes", "-oConnectTimeout=15", "n0", "uname", "-a"), True),  # clush
    (("-o", "StrictHostKeyChecking=no", "-q", "-T", "-4", "0", "echo", "$HOME"), True),
    (("-i", "key", "-F", "cfg", "-c", "aes", "-m", "mac", "-E", "log", "-J", "jump", "0", "id"), True),
    (("-X", "-Y", "-6", "-A", "-C", "-K", "-k", "-g", "0", "id"), True),
    ((b"0", b"printf", b"\xff\xfe-not-utf-8"), True),
    # ssh's -x, as client.py's _excludes tells it from bpsh's -x NODESET by the words after it
    (("-x", "n1", '"/usr/bin/hydra_pmi_proxy"', "--control-port", "vm:4000"), True),  # Hydra
    (("-x", "n1", "hostname"), True),
    (("-x", "-q", "n1", "hostname"), True),
    (("-x", "n1", ""), True),
    # what the Python client decides
    (("-x", "n1", "@up", "true"), False),  # bpsh's -x NODESET
    (("-x", "0,2", "0-3", "true"), False),
    (("-x", "n1", "-a", "true"), False),
    (("-x", "n1", "all", "true"), False),
    (("-x", "@gpu", "n1", "true"), False),
    (("-a", "-x", "n1", "true"), False),
    (("-x", "n1"), False),
    (("-x",), False),
    (("--exclude=n1", "-a", "true"), False),
    (("-l", "root", "0", "true"), False),
    (("-lsomeone", "0", "true"), False),
    (("-t", "5", "0", "true"), False),
    (("--timeout=0.5", "0", "true"), False),
    (("--fanout", "2", "0", "true"), False),
    (("-h",), False),
    (("--help",), False),
    (("-nh", "0", "true"), False),
    (("-b", "-p", "0", "true"), False),  # -b with -p: a usage error
    (("-bs", "0", "true"), False),
    ((), False),
    (("0",), False),
    (("-a",), False),
    (("0;1", "true"), False),
    (("-z", "0", "true"), False),
    (("-qT", "0", "true"), False),
    (("-", "0", "true"), False),
    (("-a-p", "true"), False),
    (("--all=1", "true"), False),
    (("--cache",), False),
    (("--socket",), False),
    (("-o",), False),
    (("-o", "", "0", "true"), False),
    (("--socket", "/nonexistent/bpsh.sock", "0", "true"), False),  # beoserv not reachable
    (("--socket", "/" + "s" * 120, "0", "true"), False),  # longer than a socket address takes
]


class StandIn:
    """A beoserv for one request at a time: it takes the request and its descriptors, writes to the
    client's stdout and stderr through them, records what the client sends after, and answers
    X<status> (or, with answer None, closes the connection without one)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.requests: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self.later: list[bytes] = []
        self.answer: bytes | None = b"X%d" % STATUS
        self.hold = threading.Event()  # while clear, the answer waits (the client sends signals meanwhile)
        self.hold.set()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data, fds, _, _ = socket.recv_fds(conn, client.MAX_REQUEST, 8)
                if not data and not fds:
                    continue  # the Python client connects, then finds its request too big to send
                self.requests.put((data, len(fds)))
                if len(fds) == 3:
                    os.write(fds[1], b"to stdout\n")
                    os.write(fds[2], b"to stderr\n")
                for fd in fds:
                    os.close(fd)
                conn.settimeout(0.05)
                while not self.hold.is_set():
                    try:
                        self.later.append(conn.recv(64))
                    except TimeoutError:
                        pass
                if self.answer is not None:
                    try:
                        conn.send(self.answer)
                    except OSError:  # the client was killed
                        pass

    def request(self) -> tuple[bytes, int] | None:
        """What the last client sent, or None if it sent nothing."""
        try:
            return self.requests.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    server = StandIn(tmp_path_factory.mktemp("standin") / "bpsh.sock")
    yield server
    server.close()


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The compiled client with a fallback that only says it was asked: which client decided a line."""
    where = tmp_path_factory.mktemp("probe")
    stub = where / "python-client"
    stub.write_text('#!/bin/sh\necho "fell back: $*"\nexit 99\n')
    stub.chmod(0o755)
    return str(compile_client(where / "bpsh", [str(stub)]))


CLIENT_ARGV = {"python": ["/usr/bin/python3", "-IS", BPSH_SCRIPT], "compiled": None}


def run(program: list[str], args, stand_in: StandIn, cwd: Path, **kwargs):
    args = [arg.replace(SOCK, stand_in.path) if isinstance(arg, str) else arg for arg in args]
    env = {"BEOSERV_SOCKET": stand_in.path, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SAME": "1"}
    done = subprocess.run([*program, *args], env=env, cwd=cwd, capture_output=True, timeout=30, **kwargs)
    return done.returncode, done.stdout, done.stderr, stand_in.request()


def clients():
    return {"python": CLIENT_ARGV["python"], "compiled": [compiled_bpsh()]}


@pytest.mark.parametrize("args, fast", CASES, ids=[" ".join(map(str, case[0])) or "(none)" for case in CASES])
def test_both_clients_send_the_same_request_and_end_alike(stand_in, probe, tmp_path, args, fast):
    python, compiled = (run(argv, args, stand_in, tmp_path) for argv in clients().values())
    assert compiled == python
    if fast:
        status, stdout, stderr, request = python
        assert status == STATUS and stdout == b"to stdout\n" and stderr == b"to stderr\n"
        assert request is not None and request[1] == 3  # stdin, stdout, stderr
        assert run([probe], args, stand_in, tmp_path) == python  # decided by the compiled client itself
    else:
        status, stdout, _, request = run([probe], args, stand_in, tmp_path)
        asked = " ".join(arg if isinstance(arg, str) else os.fsdecode(arg) for arg in args)
        assert (status, stdout, request) == (99, f"fell back: {asked}\n".replace(SOCK, stand_in.path).encode(), None)


def test_the_table_tries_every_option_the_python_client_knows():
    """An option added to client.py is an option the compiled client must be shown to handle or pass on."""
    known = {*client.VALUED, *client.SSH_FLAGS, *client.SSH_VALUED, *(f"-{c}" for c in client.FLAG_LETTERS)}
    known |= {"--all", "--help", "--"}
    tried = {arg.split("=")[0] for args, _ in CASES for arg in args if isinstance(arg, str)}
    tried |= {arg[:2] for args, _ in CASES for arg in args if isinstance(arg, str) and arg[:2] in client.SSH_VALUED}
    assert known - tried == set()


def test_a_long_request_and_the_whole_environment_go_as_the_python_client_sends_them(stand_in, tmp_path):
    env = {f"VAR_{i}": "v" * (i * 37 % 500) for i in range(300)}
    env |= {"BEOSERV_SOCKET": stand_in.path, "EMPTY": "", "UTF": "\u2603", "TAB": "a\tb\nc"}
    requests = []
    for argv in clients().values():
        got = subprocess.run([*argv, "0", "env"], env=env, cwd=tmp_path, capture_output=True, timeout=30)
        assert got.returncode == STATUS
        requests.append(stand_in.request())
    python, compiled = requests
    assert python is not None and compiled == python and len(python[0]) > 70_000


@pytest.mark.parametrize(
    "locale",
    [{}, {"LANG": "C"}, {"LC_CTYPE": "C.UTF-8"}, {"LC_ALL": "C"}, {"LANG": "C.UTF-8"}],
    ids=["none", "LANG=C", "LC_CTYPE=C.UTF-8", "LC_ALL=C", "LANG=C.UTF-8"],
)
def test_the_jobs_get_the_callers_locale_not_the_one_python_coerces_to(stand_in, tmp_path, locale):
    """In the C locale Python sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538): the job must not
    get it from the Python client, as it does not from the compiled one."""
    requests = []
    for argv in clients().values():
        env = {"BEOSERV_SOCKET": stand_in.path, **locale}
        got = subprocess.run([*argv, "0", "env"], env=env, cwd=tmp_path, capture_output=True, timeout=30)
        assert got.returncode == STATUS
        requests.append(stand_in.request())
    python, compiled = requests
    assert python is not None and compiled == python
    sent = python[0].split(b"\0")
    given = [f"{name}={value}".encode() for name, value in locale.items() if name.startswith("LC_")]
    assert [entry for entry in sent if entry.startswith(b"LC_")] == given


def test_a_request_over_the_limit_is_the_python_clients_to_refuse(stand_in, tmp_path):
    """Over client.MAX_REQUEST the compiled client passes the line on; the Python one names the culprit."""
    env = {"BEOSERV_SOCKET": stand_in.path, **{f"BIG_{i}": "x" * 120_000 for i in range(9)}}
    for argv in clients().values():
        got = subprocess.run([*argv, "0", "true"], env=env, capture_output=True, text=True, timeout=30)
        assert got.returncode == client.USAGE_EXIT and "environment variable BIG_" in got.stderr, got.stderr
        assert stand_in.request() is None


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_lost_connection_is_status_255_with_the_same_words(stand_in, tmp_path, name):
    stand_in.answer = None
    try:
        status, stdout, stderr, _ = run(clients()[name], ("0", "true"), stand_in, tmp_path)
    finally:
        stand_in.answer = b"X%d" % STATUS
    assert (status, stderr) == (client.NO_EXIT, b"to stderr\n" + client.CLOSED_EARLY.encode())


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_signals_are_forwarded_as_the_python_client_forwards_them(stand_in, tmp_path, name):
    """Each of FORWARDED_SIGNALS as S<number>; Ctrl-Z (SIGTSTP) as SIGSTOP to the jobs, then bpsh stops
    itself until SIGCONT, which is forwarded too."""
    stand_in.hold.clear()
    stand_in.later = []
    env = {"BEOSERV_SOCKET": stand_in.path}
    proc = subprocess.Popen([*clients()[name], "0", "sleep"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        assert stand_in.requests.get(timeout=10)
        time.sleep(0.3)  # the request is sent before the handlers are set: let them be
        expected = []
        for signum in client.FORWARDED_SIGNALS:
            proc.send_signal(signum)
            expected.append(b"S%d" % signum)
            wait_for(lambda: len(stand_in.later) == len(expected))
        proc.send_signal(signal.SIGTSTP)
        wait_for(lambda: process_state(proc.pid) == "T")
        proc.send_signal(signal.SIGCONT)
        expected += [b"S%d" % signal.SIGSTOP, b"S%d" % signal.SIGCONT]
        wait_for(lambda: len(stand_in.later) == len(expected))
        assert stand_in.later == expected
    finally:
        stand_in.hold.set()
    assert proc.wait(10) == STATUS


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_build_py_installs_the_compiled_client_and_compiles_it_again_only_when_needed(tmp_path, monkeypatch):
    """.venv/bin/bpsh: the compiled client, falling back to this checkout's client file; a link an older
    setup left is replaced, not written through; a current one is kept."""
    spec = importlib.util.spec_from_file_location("beoboot_build", Path(BPSH_SCRIPT).parents[3] / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "VENV", tmp_path)
    (tmp_path / "bin").mkdir()
    target = tmp_path / "old-client"
    target.write_text("the file an older setup's link points at\n")
    (tmp_path / "bin" / "bpsh").symlink_to(target)
    build.install_fast_bpsh()
    executable = tmp_path / "bin" / "bpsh"
    assert not executable.is_symlink() and executable.read_bytes()[:4] == b"\x7fELF"
    assert os.fsencode(BPSH_SCRIPT) in executable.read_bytes()
    assert target.read_text() == "the file an older setup's link points at\n"
    built = executable.stat().st_mtime_ns  # a file written again has a later one (an inode may be reused)
    build.install_fast_bpsh()
    assert executable.stat().st_mtime_ns == built  # current: kept
    source = Path(client.__file__).stat().st_mtime
    os.utime(executable, (source - 1, source - 1))  # older than client.py
    build.install_fast_bpsh()
    assert executable.stat().st_mtime > source
