"""The compiled bpsh (beoboot/master/bpsh/fast/bpsh.c) against the Python one (client.py), on one table of
command lines: the same request bytes to beoserv, the same descriptors, the same exit status, output and
errors; and for each line, which of the two decided it: the compiled client's FAST_PATH, or the Python
client it execs for everything else. Then the records beoserv relays output in (J, O, E, X, the "P" for a
closed stdout) and a reattach after beoserv went away, byte for byte alike. Against a stand-in beoserv on a
scratch socket: no root needed."""

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

STATUS = 7  # the highest status of the stand-in's jobs: any status the clients must pass on
SOCK = "{sock}"  # in a case: the stand-in's socket path


def job_started(job: int, node: int) -> bytes:
    return b"J" + job.to_bytes(8, "big") + b"%d" % node


def output(stream: int, job: int, end: int, data: bytes) -> bytes:
    return b"O" + bytes([stream]) + job.to_bytes(8, "big") + end.to_bytes(8, "big") + data


def job_ended(job: int, status: int) -> bytes:
    return b"E" + job.to_bytes(8, "big") + b"%d" % status


# What the stand-in relays for a request: two jobs, one line in two records, one of them again (the guard
# drops it), a record that only moves an offset, beoserv's own line (job 0), the jobs' ends; then X
BEGUN = [job_started(41, 0), job_started(42, 3), output(1, 41, 4, b"to s"), output(2, 0, 0, b"from beoserv\n")]
RECORDS = [
    *BEGUN,
    output(1, 41, 4, b"to s"),
    output(1, 41, 10, b"tdout\n"),
    output(2, 42, 10, b"to stderr\n"),
    output(2, 42, 15, b""),
    output(2, 42, 12, b"er\n"),
    job_ended(41, STATUS),
    job_ended(42, 0),
]
ANSWER = b"X3"  # lower than job 41's: the clients exit with the highest
STDOUT = b"to stdout\n"
STDERR = b"from beoserv\nto stderr\n"

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
    (("--reattach-timeout", "30", "0", "true"), True),
    (("--reattach-timeout=0.5", "-n", "0", "true"), True),
    (("--reattach-timeout=0", "0", "true"), True),
    (("--reattach-timeout", "86400.", "0", "true"), True),
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
    (("--reattach-timeout", "1e2", "0", "true"), False),  # not plainly written: the Python client reads it
    (("--reattach-timeout", "-1", "0", "true"), False),
    (("--reattach-timeout=86401", "0", "true"), False),
    (("--reattach-timeout=nan", "0", "true"), False),
    (("--reattach-timeout",), False),
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
    """A beoserv for one request at a time: it takes the request and its descriptors, relays `records`,
    then answers `answer` (or, with answer None, closes the connection without one) and records what the
    client sends until it closes. With `drop` set, it relays those records instead, closes the connection
    and is away (its socket renamed) until `back` is set: the client's reattach record is the next
    request."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.requests: queue.Queue[tuple[bytes, int]] = queue.Queue()
        self.later: list[bytes] = []
        self.records = RECORDS
        self.answer: bytes | None = ANSWER
        self.drop: list[bytes] | None = None
        self.gone = threading.Event()
        self.back = threading.Event()
        self.hold = threading.Event()  # while clear, the answer waits (the client sends signals meanwhile)
        self.hold.set()
        self.served = threading.Event()  # set when a client that got records closed its connection
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
                for fd in fds:
                    os.close(fd)
                if self.drop is not None:
                    self._go_away(conn, self.drop)
                    continue
                try:
                    for record in self.records:
                        conn.send(record)
                except OSError:  # the client was killed
                    continue
                conn.settimeout(0.05)
                while not self.hold.is_set():
                    try:
                        self.later.append(conn.recv(64))
                    except TimeoutError:
                        pass
                if self.answer is None:  # lost: closed now, not after the client gives up on it
                    self.served.set()
                    continue
                try:
                    conn.send(self.answer)
                except OSError:
                    pass
                conn.settimeout(10)
                try:
                    while record := conn.recv(64):  # until the client closes: a "P" sent late is seen
                        self.later.append(record)
                except OSError:
                    pass
                self.served.set()

    def _go_away(self, conn: socket.socket, records: list[bytes]) -> None:
        for record in records:
            conn.send(record)
        conn.close()
        os.rename(self.path, self.path + ".away")
        self.drop = None
        self.gone.set()
        self.back.wait()
        os.rename(self.path + ".away", self.path)

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
        assert (status, stdout, stderr) == (STATUS, STDOUT, STDERR)
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
    """Lost with no job running (none was named, or all ended): nothing to reattach to."""
    stand_in.answer, stand_in.records = None, [output(2, 0, 0, b"to stderr\n"), *RECORDS[:2], *RECORDS[-2:]]
    try:
        status, stdout, stderr, _ = run(clients()[name], ("0", "true"), stand_in, tmp_path)
    finally:
        stand_in.answer, stand_in.records = ANSWER, RECORDS
    assert (status, stderr) == (client.NO_EXIT, b"to stderr\n" + client.CLOSED_EARLY.encode())


def test_a_lost_connection_with_a_reattach_timeout_of_0_is_status_255_alike(stand_in, tmp_path):
    stand_in.answer, stand_in.records = None, BEGUN
    try:
        got = [run(argv, ("--reattach-timeout", "0", "0", "true"), stand_in, tmp_path) for argv in clients().values()]
    finally:
        stand_in.answer, stand_in.records = ANSWER, RECORDS
    python, compiled = got
    assert compiled == python
    assert python[:3] == (client.NO_EXIT, b"to s", b"from beoserv\n" + client.CLOSED_EARLY.encode())


def test_both_clients_reattach_alike_and_forward_a_signal_sent_meanwhile(stand_in, tmp_path):
    """beoserv goes away after the jobs' first records; each client waits, reattaches with the jobs and
    offsets it had (REATTACH_MAGIC; -n and -b: flags "np"), forwards the SIGUSR1 it got while beoserv was
    away, and writes the rest once (the records a new beoserv sends again are dropped)."""
    env = {"BEOSERV_SOCKET": stand_in.path, "PATH": "/usr/bin:/bin"}
    args = ("-n", "-b", "--reattach-timeout", "20", "0", "true")
    seen = []
    stand_in.records = RECORDS[len(BEGUN) :]  # the rest, from a record the client has already
    try:
        for argv in clients().values():
            stand_in.drop, stand_in.later = BEGUN, []
            stand_in.served.clear()
            stand_in.gone.clear()
            stand_in.back.clear()
            proc = subprocess.Popen(
                [*argv, *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            try:
                assert stand_in.gone.wait(10)
                time.sleep(0.3)  # the handlers are set once the request is sent
                proc.send_signal(signal.SIGUSR1)
                time.sleep(0.7)  # at least one attempt to reach it fails
            finally:
                stand_in.back.set()
            out, err = proc.communicate(timeout=30)
            assert stand_in.served.wait(10)
            first, reattach = stand_in.request(), stand_in.request()
            seen.append((proc.returncode, out, err, first and first[1], reattach, stand_in.later))
    finally:
        stand_in.records = RECORDS
    python, compiled = seen
    assert compiled == python
    assert python == (
        STATUS,
        STDOUT,
        b"from beoserv\nbpsh: beoserv went away; waiting up to 20 s for it to reattach to 2 jobs\n"
        + b"bpsh: reattached\nto stderr\n",
        3,
        (client.REATTACH_MAGIC + b"\0np\x0041:4:0:0\x0042:0:0:3", 3),
        [b"S%d" % signal.SIGUSR1],
    )


def test_both_clients_give_up_alike_when_beoserv_does_not_come_back(stand_in, tmp_path):
    seen = []
    for argv in clients().values():
        stand_in.drop = BEGUN
        stand_in.gone.clear()
        stand_in.back.clear()
        try:
            seen.append(run(argv, ("--reattach-timeout", "1.2", "0", "true"), stand_in, tmp_path)[:3])
        finally:
            stand_in.back.set()
        stand_in.request()
    python, compiled = seen
    assert compiled == python
    assert python == (
        client.NO_EXIT,
        b"to s",
        b"from beoserv\nbpsh: beoserv went away; waiting up to 1.2 s for it to reattach to 2 jobs\n"
        + b"bpsh: beoserv did not come back within 1.2 s\n",
    )


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_closed_stdout_is_said_once_and_the_rest_still_ends_alike(stand_in, tmp_path, name):
    """`bpsh 0 cat big | head`: the first write to stdout finds a closed pipe; the client sends "P" once
    (beoserv has the job get SIGPIPE), drops the rest of stdout, and still writes stderr and ends."""
    stand_in.later = []
    stand_in.served.clear()
    read, write = os.pipe()
    os.close(read)
    env = {"BEOSERV_SOCKET": stand_in.path}
    try:
        done = subprocess.run(
            [*clients()[name], "0", "true"], env=env, cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write)
    stand_in.request()
    assert stand_in.served.wait(10)
    assert (done.returncode, done.stderr, stand_in.later) == (STATUS, STDERR, [b"P"])


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_signals_are_forwarded_as_the_python_client_forwards_them(stand_in, tmp_path, name):
    """Each of FORWARDED_SIGNALS as S<number>; Ctrl-Z (SIGTSTP) as SIGSTOP to the jobs, then bpsh stops
    itself until SIGCONT, which is forwarded too."""
    stand_in.hold.clear()
    stand_in.later = []
    env = {"BEOSERV_SOCKET": stand_in.path}
    # its own process group, as a shell's job: in pytest's, which is orphaned when pytest was started in the
    # background of a shell that has exited (nohup, CI), the kernel discards the stop that Ctrl-Z asks for
    proc = subprocess.Popen(
        [*clients()[name], "0", "sleep"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, process_group=0
    )
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
