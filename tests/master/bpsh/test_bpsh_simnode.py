"""bpsh end to end on simulated nodes: the real beoserv, `python -m stage3.simnode` (two nodes in one process,
environment roots in a scratch directory, jobs chrooted), and the real `bpsh` command line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from master_helpers import (
    CLIENTS,
    MasterProcess,
    bpsh_argv,
    bpsh_argv_for_anyone,
    let_others_reach,
    start_simnodes,
    stdlib_zip_member,
)

BPCP = [sys.executable, "-m", "beoboot.master.bpsh.bpcp"]

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root")

SKELETON = {"dev", "proc", "sys", "tmp", "etc"}
BROUGHT_BY_LS = {"usr", "bin", "lib", "lib64"}  # /usr/bin/ls and its libraries, and the master's /bin, /lib links


def as_under_nohup():
    """The simulated nodes start as `nohup` would start them: SIGHUP ignored, and an ignored signal is
    inherited through exec, so jobs would ignore it too unless the launcher resets it."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    (work / "boot").mkdir()
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log").start()
    sim = start_simnodes(master.url, work, 2, preexec_fn=as_under_nohup)
    yield master.url, master.bpsh_socket, work / "nodes"
    sim.send_signal(signal.SIGTERM)
    sim.wait(10)
    master.stop()


def bpsh(socket, *args, client="python", **kwargs):
    argv = bpsh_argv(socket, *args, client=client)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


# the tests of the common path run with both clients (CLIENTS): the compiled one must behave as the Python one
with_each_client = pytest.mark.parametrize("client", CLIENTS)


def test_env_root_starts_empty_and_ls_shows_only_what_jobs_brought(cluster):
    _, sock, nodes = cluster
    env = nodes / "node1" / "env"
    assert set(os.listdir(env)) == SKELETON | {".libcache"}
    result = bpsh(sock, "1", "ls", "/")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert SKELETON <= listed and "usr" in listed and listed - SKELETON <= BROUGHT_BY_LS


@with_each_client
def test_exit_status_stdout_and_stderr(cluster, client):
    url, sock, _ = cluster
    assert bpsh(sock, "0", "/bin/true", client=client).returncode == 0
    result = bpsh(sock, "0", "sh", "-c", "echo out; echo err >&2; exit 3", client=client)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_job_starts_with_no_signal_ignored_or_blocked(cluster):
    """As from a fresh shell, whatever the agent ignores (Python: SIGPIPE, SIGXFSZ; under nohup: SIGHUP)."""
    url, sock, _ = cluster
    result = bpsh(sock, "0", "grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status")
    masks = dict(line.split(":\t") for line in result.stdout.splitlines())
    assert int(masks["SigBlk"], 16) == 0, result.stdout
    # signals 1-31; glibc's posix_spawn leaves its own 32 and 33 ignored (libc installs their handlers
    # when a program first needs them)
    assert int(masks["SigIgn"], 16) & 0x7FFFFFFF == 0, result.stdout


@with_each_client
def test_stdin_is_forwarded(cluster, client):
    url, sock, _ = cluster
    result = bpsh(sock, "0", "cat", input="hello\nworld\n", client=client)
    assert result.stdout == "hello\nworld\n"


def test_python_runs_from_the_masters_install(cluster):
    url, sock, _ = cluster
    result = bpsh(sock, "0", "/usr/bin/python3", "-c", "print(6*7)")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr


def test_an_env_script_runs_the_command_its_path_finds(cluster, tmp_path):
    url, sock, _ = cluster
    script = tmp_path / "report"
    script.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps({'argv': sys.argv[1:]}))\n")
    script.chmod(0o755)
    result = bpsh(sock, "0", str(script), "a", env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stdout) == (0, '{"argv": ["a"]}\n'), result.stderr


def test_python_jobs_import_the_masters_stdlib_from_one_zip(cluster):
    """The stdlib comes as /usr/lib/python311.zip, extension modules (and their libraries) as files."""
    url, sock, nodes = cluster
    program = (
        "import json, sqlite3, ssl, asyncio, decimal\n"
        "print(json.dumps([decimal.Decimal(1) / 4], default=str), sqlite3.sqlite_version, ssl.OPENSSL_VERSION)\n"
        "print(json.__file__, ssl._ssl.__file__)"
    )
    result = bpsh(sock, "0", "/usr/bin/python3", "-c", program)
    assert result.returncode == 0, result.stderr
    on_master = subprocess.run(["/usr/bin/python3", "-c", program], capture_output=True, text=True, check=True)
    versions, files = result.stdout.splitlines()
    master_versions, master_files = on_master.stdout.splitlines()
    assert versions == master_versions and versions.startswith('["0.25"] ')
    json_file, ssl_file = files.split()
    assert json_file == "/usr/lib/python311.zip/" + stdlib_zip_member("json/__init__.py")
    assert ssl_file == master_files.split()[1] and ssl_file.startswith("/usr/lib/python3.11/lib-dynload/_ssl.")
    assert sorted(os.listdir(nodes / "node0" / "env" / "usr/lib/python3.11")) == ["lib-dynload"]


def test_a_python_program_brings_the_modules_and_packages_it_imports(cluster, tmp_path):
    """`bpsh 1 python3 main.py`: main.py, the helper module beside it and a package on PYTHONPATH (with a
    data file and its distribution's metadata) come along; an edited helper is the next job's helper."""
    url, sock, _ = cluster
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg/__init__.py").write_text(
        "import os\nTABLE = open(os.path.join(os.path.dirname(__file__), 't.txt')).read()\n"
    )
    (lib / "pkg/t.txt").write_text("from-data-file")
    (lib / "pkg-2.5.dist-info").mkdir()
    (lib / "pkg-2.5.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 2.5\n")
    (lib / "pkg-2.5.dist-info/top_level.txt").write_text("pkg\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "helper.py").write_text("VALUE = 'first'\n")
    (work / "main.py").write_text(
        "import helper, pkg, importlib.metadata as m\nprint(helper.VALUE, pkg.TABLE, m.version('pkg'))\n"
    )
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib)}
    result = bpsh(sock, "1", "/usr/bin/python3", "main.py", env=env, cwd=work)
    assert (result.returncode, result.stdout) == (0, "first from-data-file 2.5\n"), result.stderr
    (work / "helper.py").write_text("VALUE = 'second'\n")
    result = bpsh(sock, "1", "nice", "/usr/bin/python3", "main.py", env=env, cwd=work)
    assert (result.returncode, result.stdout) == (0, "second from-data-file 2.5\n"), result.stderr
    (work / "job.sh").write_text("echo from a script given to sh\n")
    assert bpsh(sock, "1", "sh", "job.sh", cwd=work).stdout == "from a script given to sh\n"


def test_sequential_output_keeps_each_nodes_output_whole_in_node_order(cluster):
    """-s: node 0 sleeps between its lines, node 1 is done at once, yet node 0's output comes first and
    whole; -d adds a divider per node; -p still leads each line; 40 MB held behind a slower node
    arrive whole (the waiting node is read no further than the high-water mark meanwhile)."""
    _, sock, nodes = cluster
    marker = nodes / "node0" / "env" / "tmp" / "slow"
    marker.write_text("")
    script = "echo start; if [ -e /tmp/slow ]; then sleep 1; echo slow; fi; echo end"
    try:
        result = bpsh(sock, "-s", "1,0", "sh", "-c", script)
        assert (result.returncode, result.stdout) == (0, "start\nslow\nend\nstart\nend\n")
        result = bpsh(sock, "-d", "-p", "-a", "sh", "-c", script)
        assert result.stdout == ("---- node 0 ----\n0: start\n0: slow\n0: end\n---- node 1 ----\n1: start\n1: end\n")
        big = bpsh(sock, "-s", "0,1", "sh", "-c", "if [ -e /tmp/slow ]; then sleep 2; fi; seq 3000000")
        lines = big.stdout.split("\n")
        assert big.returncode == 0 and len(lines) == 6000001
        assert lines[:2] == ["1", "2"] and lines[2999999:3000001] == ["3000000", "1"]
    finally:
        marker.unlink()


def test_file_reads_the_magic_database_its_library_needs(cluster):
    _, sock, _ = cluster
    result = bpsh(sock, "0", "file", "-b", "/usr/bin/file")
    on_master = subprocess.run(["file", "-b", "/usr/bin/file"], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, on_master.stdout) and "ELF 64-bit" in result.stdout, result.stderr


def test_perl_scripts_get_perls_essential_modules_and_the_users_locale(cluster):
    """perl-base's modules come with perl (strict, POSIX, Getopt::Long, ...), and the locale LANG names
    comes with every job: without it perl warned on every run that setlocale failed."""
    url, sock, _ = cluster
    program = (
        "use strict; use warnings; use POSIX qw(floor); use Getopt::Long; use List::Util qw(sum);"
        "print floor(sum(1.5, 1)), qq(\\n)"
    )
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": ""}
    result = bpsh(sock, "0", "perl", "-e", program, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "2\n", "")
    python = bpsh(
        sock, "1", "/usr/bin/python3", "-c", "import locale; print(locale.setlocale(locale.LC_ALL, ''))", env=env
    )
    assert (python.returncode, python.stdout) == (0, "C.UTF-8\n"), python.stderr


def test_a_perl_program_brings_the_modules_it_uses(cluster, tmp_path):
    """-MData::Dumper (core, XS: its auto/ shared object), and a script's own modules through
    `use lib "$FindBin::Bin/lib"` and `use parent`, with no --cache."""
    _, sock, _ = cluster
    dumper = bpsh(sock, "1", "perl", "-MData::Dumper", "-e", "$Data::Dumper::Indent = 0; print Dumper([1, {a => 2}])")
    assert (dumper.returncode, dumper.stdout) == (0, "$VAR1 = [1,{'a' => 2}];"), dumper.stderr
    snowman = bpsh(sock, "1", "perl", "-CS", "-e", 'print "\\N{SNOWMAN}\\n"')  # _charnames, loaded by perl itself
    assert (snowman.returncode, snowman.stdout) == (0, "\u2603\n"), snowman.stderr
    (tmp_path / "lib/Job").mkdir(parents=True)
    (tmp_path / "lib/Job/Base.pm").write_text("package Job::Base;\nsub hello { 'base says hi' }\n1;\n")
    (tmp_path / "lib/Job/Run.pm").write_text("package Job::Run;\nuse parent 'Job::Base';\nuse JSON::PP;\n1;\n")
    (tmp_path / "run.pl").write_text(
        'use strict; use FindBin; use lib "$FindBin::Bin/lib"; use Job::Run;\n'
        'print Job::Run->hello, " ", JSON::PP->new->canonical->encode({n => 1}), "\\n";\n'
    )
    result = bpsh(sock, "1", "perl", str(tmp_path / "run.pl"))
    assert (result.returncode, result.stdout) == (0, 'base says hi {"n":1}\n'), result.stderr


def test_a_job_keeps_the_time_zone_it_names(cluster):
    url, sock, _ = cluster
    env = {**os.environ, "TZ": ":Europe/Paris"}
    result = bpsh(sock, "0", "date", "-d", "@1790000000", "+%Z %z %H", env=env)
    on_master = subprocess.run(["date", "-d", "@1790000000", "+%Z %z %H"], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout) == (0, on_master.stdout) and on_master.stdout == "CEST +0200 16\n"


def test_wrapped_commands_curses_shared_memory_and_ptys_work_as_on_a_booted_node(cluster):
    """nice/timeout bring the command they run; top finds its terminfo; /dev/shm (POSIX semaphores for
    multiprocessing and MPI) and /dev/pts are mounted in the environment root, as a booted node has them."""
    url, sock, _ = cluster
    assert bpsh(sock, "0", "nice", "-n", "5", "timeout", "30", "sh", "-c", "exit 6").returncode == 6
    top = bpsh(sock, "0", "top", "-bn1", env={**os.environ, "TERM": "xterm"})
    assert top.returncode == 0 and "PID" in top.stdout, top.stderr
    program = (
        "import multiprocessing, os, pty\nwith multiprocessing.Pool(2) as pool: print(pool.map(abs, [-1, -2]))\n"
        "print(os.ttyname(pty.openpty()[1]).rstrip('0123456789'))"
    )
    result = bpsh(sock, "1", "/usr/bin/python3", "-c", program)
    assert (result.returncode, result.stdout) == (0, "[1, 2]\n/dev/pts/\n"), result.stderr


def test_a_shell_jobs_commands_come_along(cluster, tmp_path):
    """sh -c TEXT and #!/bin/sh scripts: the programs the shell text names (ls, wc, sort, uniq) are found on
    the job's PATH and brought, with no --cache."""
    url, sock, _ = cluster
    result = bpsh(sock, "1", "sh", "-c", "ls /etc | grep -c passwd; printf 'b\\na\\n' | sort | tr a-z A-Z")
    assert (result.returncode, result.stdout) == (0, "1\nA\nB\n"), result.stderr
    script = tmp_path / "count.sh"
    script.write_text("#!/bin/sh\nset -e\nfor word in b a b; do echo $word; done | sort | uniq -c | wc -l\n")
    script.chmod(0o755)
    result = bpsh(sock, "1", str(script))
    assert (result.returncode, result.stdout.strip()) == (0, "2"), result.stderr


@with_each_client
def test_sigint_reaches_the_job_and_bps_lists_it(cluster, client):
    url, sock, _ = cluster
    job = subprocess.Popen(bpsh_argv(sock, "0", "sleep", "100", client=client))
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(url + "/api/v1/jobs") as response:
            rows = [j for j in json.load(response)["jobs"] if j["command"] == "sleep 100" and j["state"] == "running"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rows and rows[0]["node"] == 0 and rows[0]["pid"] > 0
    for command in ("bps", "bpstat --jobs"):
        listing = subprocess.run(
            [sys.executable, "-m", "beoboot.master.cli", *command.split(), "--master", url],
            capture_output=True,
            text=True,
        ).stdout
        assert "sleep 100" in listing and "running" in listing and ".0" in listing, command
    job.send_signal(signal.SIGINT)
    assert job.wait(10) == 130


@with_each_client
def test_every_node_runs_it(cluster, client):
    url, sock, _ = cluster
    result = bpsh(sock, "-a", "uptime", client=client)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("load average") == 2
    result = bpsh(sock, "-p", "-a", "sh", "-c", "echo one; printf two", client=client)
    assert sorted(result.stdout.splitlines()) == ["0: one", "0: two", "1: one", "1: two"]


@with_each_client
def test_unknown_node_and_command(cluster, client):
    url, sock, _ = cluster
    assert bpsh(sock, "7", "true", client=client).returncode == 127
    result = bpsh(sock, "0", "no-such-command-here", client=client)
    assert result.returncode == 127 and "not found on the master's PATH" in result.stderr


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc on the master")
def test_own_library_by_rpath_and_a_changed_library_is_used_at_once(cluster, tmp_path):
    _, sock, nodes = cluster

    def build_library(text):
        (tmp_path / "greet.c").write_text(f'const char *greet(void) {{ return "{text}"; }}\n')
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libgreet.so"), str(tmp_path / "greet.c")], check=True
        )

    build_library("hello from v1")
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n"
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
    assert bpsh(sock, "0", str(tmp_path / "hello")).stdout == "hello from v1\n"
    on_node = nodes / "node0" / "env" / str(tmp_path / "libgreet.so").lstrip("/")
    old = os.stat(on_node)
    time.sleep(0.01)
    build_library("hello from v2")
    assert bpsh(sock, "0", str(tmp_path / "hello")).stdout == "hello from v2\n"
    assert not os.path.samestat(old, os.stat(on_node))
    assert old.st_nlink == 2 and os.stat(on_node).st_nlink == 2  # object + the one link to it


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc on the master")
def test_a_new_library_earlier_in_the_search_path_is_used_at_once(cluster, tmp_path):
    """The cached closure is checked against the directories the search looked in, not only the files it
    found: a library installed where ld.so looks first shadows the old one on the node as on the master."""
    _, sock, _ = cluster
    first, second = tmp_path / "first", tmp_path / "second"

    def build_library(where):
        where.mkdir(exist_ok=True)
        (where / "greet.c").write_text(f'const char *greet(void) {{ return "from {where.name}"; }}\n')
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(where / "libgreet.so"), str(where / "greet.c")], check=True
        )

    build_library(second)
    (tmp_path / "main.c").write_text(
        "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n"
    )
    subprocess.run(
        [
            "gcc",
            "-o",
            str(tmp_path / "hello"),
            str(tmp_path / "main.c"),
            f"-L{second}",
            "-lgreet",
            f"-Wl,-rpath,{first}:{second}",
        ],
        check=True,
    )
    assert bpsh(sock, "0", str(tmp_path / "hello")).stdout == "from second\n"
    assert bpsh(sock, "0", str(tmp_path / "hello")).stdout == "from second\n"  # cached now
    build_library(first)
    assert subprocess.run([str(tmp_path / "hello")], capture_output=True, text=True).stdout == "from first\n"
    assert bpsh(sock, "0", str(tmp_path / "hello")).stdout == "from first\n"


@with_each_client
def test_stdin_goes_to_every_node(cluster, client):
    url, sock, _ = cluster
    result = bpsh(sock, "-a", "cat", input="to all\n", client=client)
    assert (result.returncode, result.stdout) == (0, "to all\n" * 2), result.stderr
    assert bpsh(sock, "-n", "0", "cat", input="not read\n", client=client).stdout == ""


@with_each_client
def test_the_job_runs_as_the_user_the_kernel_names_not_one_bpsh_claims(cluster, client):
    """beoserv takes uid and gid from SO_PEERCRED: nobody's bpsh runs nobody's job, whatever it sends."""
    url, sock, _ = cluster
    let_others_reach(sock)
    argv = bpsh_argv_for_anyone(sock, "0", "id", "-u", client=client)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, cwd="/")
    assert (result.returncode, result.stdout) == (0, "65534\n"), result.stderr
    assert bpsh(sock, "0", "id", "-u", client=client).stdout == "0\n"


@with_each_client
def test_the_job_has_the_supplementary_groups_of_bpsh(cluster, client):
    """From SO_PEERGROUPS: a project group that owns the data works on the node as here; more than the 256
    groups getsockopt can return come from the client's /proc entry."""
    url, sock, _ = cluster
    let_others_reach(sock)
    argv = bpsh_argv_for_anyone(sock, "0", "id", "-G", client=client)
    for groups in ([100, 4, 27], list(range(2000, 2300))):
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, extra_groups=groups, cwd="/"
        )
        assert result.returncode == 0, result.stderr
        primary, *supplementary = map(int, result.stdout.split())
        assert (primary, sorted(supplementary)) == (65534, sorted(groups))
    assert bpsh(sock, "0", "id", "-G", client=client).stdout == "0\n"  # root with no other group: the posix_spawn path


def test_the_job_knows_its_user_and_groups_by_name(cluster):
    """BeoNSS: the environment root names the user of each job and their groups (the master's entries), so
    whoami, id -n and ls -l work on the node as here. Before, only root and nobody had names there."""
    url, sock, nodes = cluster
    let_others_reach(sock)
    users = ["/usr/bin/python3", *bpsh_argv(sock, "1", "id", "-un")[1:]]
    groups = ["/usr/bin/python3", *bpsh_argv(sock, "1", "id", "-Gn")[1:]]
    for argv, expected in ((users, "nobody\n"), (groups, "nogroup adm users\n")):
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, extra_groups=[100, 4], cwd="/"
        )
        assert (result.returncode, result.stdout) == (0, expected), result.stderr
    group_file = (nodes / "node1" / "env" / "etc" / "group").read_text().splitlines()
    assert "users:x:100:nobody" in group_file and "adm:x:4:nobody" in group_file


def test_bpstat_shows_each_nodes_load_and_memory(cluster):
    """Heartbeats carry /proc/loadavg and /proc/meminfo (simulated nodes report the host's)."""
    url, _, _ = cluster
    bpstat = [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", url]
    rows = json.loads(subprocess.run([*bpstat, "--json"], capture_output=True, text=True, check=True).stdout)
    total = int(open("/proc/meminfo").read().split()[1])
    assert [row["load"]["mem_total_kib"] for row in rows] == [total, total]
    assert all(0 < row["load"]["mem_available_kib"] <= total and row["load"]["load1"] >= 0 for row in rows)
    table = subprocess.run(bpstat, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "load" in table[0].split() and "mem avail" in table[0] and f"/{total >> 10} MiB  " in table[1]


@with_each_client
def test_no_beoserv_is_a_clear_error(tmp_path, client):
    result = bpsh(tmp_path / "nothing.sock", "0", "true", client=client)
    assert result.returncode == 255
    assert "cannot reach beoserv" in result.stderr and "--socket" in result.stderr


def test_a_job_gets_sigpipe_as_at_a_shell(cluster):
    """beoserv and the launcher are Python, which ignores SIGPIPE; a job must not inherit that."""
    url, sock, _ = cluster
    result = bpsh(sock, "--cache", "/usr/bin/yes", "--cache", "/usr/bin/head", "0", "sh", "-c", "yes | head -n 1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "y\n", "")


@pytest.fixture
def open_dir():
    """A directory anyone may search (pytest's tmp_path is root's 0700), removed afterwards."""
    path = tempfile.mkdtemp(prefix="beoboot-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


def as_nobody(sock, *args):
    argv = bpsh_argv_for_anyone(sock, *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, cwd="/")


def test_a_job_brings_only_what_its_user_may_read_and_the_node_keeps_the_masters_owners(cluster, open_dir):
    """A setuid program nobody owns runs as nobody, not as root (the node held it as root's before); a file
    in root's 0700 directory, or /etc/shadow, is refused for nobody; nobody's own 0600 file reads on the
    node; and once root's job brought the 0700 directory to a node, nobody cannot read in it there either."""
    url, sock, _ = cluster
    let_others_reach(sock)
    setuid_id = open_dir / "setuid-id"
    shutil.copy("/usr/bin/id", setuid_id)
    os.chown(setuid_id, 65534, 0)
    setuid_id.chmod(0o4755)
    assert (as_nobody(sock, "0", str(setuid_id), "-u").stdout, bpsh(sock, "0", str(setuid_id), "-u").stdout) == (
        "65534\n",
        "65534\n",
    )  # as on the master: the program's owner, for anyone who runs it
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    (private / "notes").write_text("root's\n")
    (private / "notes").chmod(0o644)
    for path in (private / "notes", "/etc/shadow"):
        refused = as_nobody(sock, "--cache", str(path), "0", "true")
        assert refused.returncode == 127 and "permission denied" in refused.stderr, refused.stderr
    mine = open_dir / "mine"
    mine.write_text("nobody's\n")
    os.chown(mine, 65534, 65534)
    mine.chmod(0o600)
    assert as_nobody(sock, "--cache", str(mine), "1", "cat", str(mine)).stdout == "nobody's\n"
    assert bpsh(sock, "--cache", str(private), "1", "cat", str(private / "notes")).stdout == "root's\n"
    result = as_nobody(sock, "1", "cat", str(private / "notes"))  # cat comes; the notes are on the node already
    assert result.returncode == 1 and "Permission denied" in result.stderr


def test_a_project_directory_opened_by_an_acl_is_open_on_the_node_as_on_the_master(cluster, open_dir):
    """0700 root's, opened to nobody by setfacl: nobody's job brings a file from it (the kernel's own check
    sees the ACL), and the node holds the directory and the file with their ACLs, so the job reads it."""
    _, sock, nodes = cluster
    let_others_reach(sock)
    project = open_dir / "project"
    project.mkdir(mode=0o700)
    (project / "data").write_text("shared\n")
    (project / "data").chmod(0o600)
    subprocess.run(["setfacl", "-m", "u:65534:rx", str(project)], check=True)
    subprocess.run(["setfacl", "-m", "u:65534:r", str(project / "data")], check=True)
    result = as_nobody(sock, "--cache", str(project / "data"), "1", "cat", str(project / "data"))
    assert (result.returncode, result.stdout) == (0, "shared\n"), result.stderr
    held = nodes / "node1" / "env" / str(project).lstrip("/")
    acl = subprocess.run(["getfacl", "-cpn", str(held)], capture_output=True, text=True, check=True).stdout
    assert "user:65534:r-x" in acl and os.stat(held).st_mode & 0o777 == 0o750


def test_an_exec_failure_on_the_node_says_why(cluster, open_dir):
    url, sock, _ = cluster
    program = open_dir / "private"
    program.write_text("#!/bin/sh\necho should not run\n")
    program.chmod(0o744)  # nobody may read it, so it comes; only its owner may run it, on the node too
    argv = ["/usr/bin/python3", *bpsh_argv(sock, "0", str(program))[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, user=65534, group=65534, cwd="/")
    assert result.returncode == 127 and "Permission denied" in result.stderr and "node 0" in result.stderr
    assert result.stdout == ""


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@with_each_client
def test_ctrl_z_stops_the_remote_job_and_bg_continues_it(cluster, tmp_path, client):
    url, sock, _ = cluster
    out = tmp_path / "out"
    counter = "i=0; while [ $i -lt 600 ]; do echo $i; i=$((i+1)); sleep 0.05; done"
    with open(out, "wb") as stdout:
        # its own process group, as a shell's job: a stop signal is not discarded as for an orphaned group
        job = subprocess.Popen(
            bpsh_argv(sock, "--cache", "/usr/bin/sleep", "0", "sh", "-c", counter, client=client),
            stdout=stdout,
            process_group=0,
        )

    def lines_after(seconds: float) -> int:
        time.sleep(seconds)
        return len(out.read_bytes().splitlines())

    try:
        deadline = time.monotonic() + 20
        while lines_after(0.1) < 3:
            assert time.monotonic() < deadline and job.poll() is None
        job.send_signal(signal.SIGTSTP)  # what the terminal sends on Ctrl-Z
        time.sleep(0.3)
        assert process_state(job.pid) == "T"
        stopped_at = lines_after(0)
        assert lines_after(0.6) == stopped_at  # the remote counter is stopped too
        job.send_signal(signal.SIGCONT)  # `bg`
        assert lines_after(0.6) > stopped_at + 3
        job.send_signal(signal.SIGTERM)
        assert job.wait(10) == 128 + signal.SIGTERM
    finally:
        job.kill()


def running_jobs(url: str, command: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v1/jobs") as response:
        return [j for j in json.load(response)["jobs"] if j["command"] == command and j["state"] == "running"]


def wait_until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@with_each_client
def test_a_reader_that_goes_away_ends_the_job_by_sigpipe(cluster, client):
    url, sock, _ = cluster
    argv = bpsh_argv(sock, "--cache", "/usr/bin/yes", "0", "yes", client=client)
    bpsh_proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert bpsh_proc.stdout.read(4) == b"y\ny\n"
    bpsh_proc.stdout.close()  # as `| head` does
    assert bpsh_proc.wait(10) == 128 + signal.SIGPIPE
    assert wait_until(lambda: not running_jobs(url, "yes"))


def test_ctrl_c_while_the_node_still_fetches_the_jobs_files_ends_the_job(cluster, tmp_path):
    """A signal that reaches the node before the job has a pid is kept and delivered when it starts: it
    used to be dropped, and the job ran on after bpsh was interrupted."""
    url, sock, _ = cluster
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 << 20))  # 192 MiB to fetch and hash: the node is busy for a while
    job = subprocess.Popen(bpsh_argv(sock, "--cache", str(big), "1", "sleep", "102"))
    try:
        assert wait_until(lambda: starting_jobs(url, "sleep 102"), timeout=60)
        job.send_signal(signal.SIGINT)
        assert job.wait(60) == 130
        assert running_jobs(url, "sleep 102") == [] and starting_jobs(url, "sleep 102") == []
    finally:
        job.kill()


def starting_jobs(url: str, command: str) -> list[dict]:
    with urllib.request.urlopen(url + "/api/v1/jobs") as response:
        return [j for j in json.load(response)["jobs"] if j["command"] == command and j["state"] == "starting"]


@with_each_client
def test_a_killed_bpsh_hangs_up_its_jobs(cluster, client):
    url, sock, _ = cluster
    bpsh_proc = subprocess.Popen(bpsh_argv(sock, "0", "sleep", "101", client=client))
    assert wait_until(lambda: running_jobs(url, "sleep 101"))
    bpsh_proc.kill()
    bpsh_proc.wait()
    assert wait_until(lambda: not running_jobs(url, "sleep 101"))  # SIGHUP, as a closed terminal's jobs get


def beoserv_rss_kib(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for line in subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True
    ).stdout.splitlines():
        pid = line.split("pid=")[1].split(",")[0]
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
    raise AssertionError("beoserv not found")


def test_a_slow_reader_holds_the_job_back_not_beoserv_memory(cluster):
    url, sock, _ = cluster
    size = 64 << 20
    before = beoserv_rss_kib(url)
    proc = subprocess.Popen(
        bpsh_argv(
            sock, "--cache", "/usr/bin/yes", "--cache", "/usr/bin/head", "0", "sh", "-c", f"yes | head -c {size}"
        ),
        stdout=subprocess.PIPE,
    )
    time.sleep(3)  # nobody reads: the job must be held back, not its output piled up in beoserv
    grown = beoserv_rss_kib(url) - before
    received = 0
    while chunk := proc.stdout.read(1 << 20):
        received += len(chunk)
    assert proc.wait(30) == 0 and received == size
    assert grown < 32 << 10, f"beoserv grew by {grown} KiB while the reader slept"


def bpcp(sock, *operands):
    return subprocess.run([*BPCP, "--socket", str(sock), *operands], capture_output=True, text=True, timeout=120)


def test_bpcp_copies_files_to_a_node_and_back_whole(cluster, tmp_path):
    url, sock, nodes = cluster
    data = os.urandom(3 << 20)
    (tmp_path / "input.bin").write_bytes(data)
    (tmp_path / "notes.txt").write_text("second file\n")
    done = bpcp(sock, str(tmp_path / "input.bin"), "n1:/tmp/input.bin")
    assert done.returncode == 0, done.stderr
    assert (nodes / "node1" / "env" / "tmp" / "input.bin").read_bytes() == data  # in the environment root
    assert bpsh(sock, "1", "sha256sum", "/tmp/input.bin").stdout.split()[0] == hashlib.sha256(data).hexdigest()
    done = bpcp(sock, str(tmp_path / "input.bin"), str(tmp_path / "notes.txt"), ".0:/tmp/")  # several, into a directory
    assert done.returncode == 0, done.stderr
    assert set(os.listdir(nodes / "node0" / "env" / "tmp")) >= {"input.bin", "notes.txt"}
    back = tmp_path / "back"
    back.mkdir()
    done = bpcp(sock, "1:/tmp/input.bin", str(back))
    assert done.returncode == 0, done.stderr
    assert (back / "input.bin").read_bytes() == data and os.listdir(back) == ["input.bin"]


def test_bpcp_failures_say_why_and_leave_nothing_half_written(cluster, tmp_path):
    url, sock, nodes = cluster
    (tmp_path / "input.txt").write_text("x\n")
    failed = bpcp(sock, str(tmp_path / "input.txt"), "0:/no/such/dir/input.txt")
    assert failed.returncode == 1 and "copying" in failed.stderr and "No such file or directory" in failed.stderr
    failed = bpcp(sock, "0:/tmp/never-there", str(tmp_path / "out"))
    assert failed.returncode == 1 and "dd exited" in failed.stderr
    assert sorted(os.listdir(tmp_path)) == ["input.txt"]  # no partial file, no temporary
    assert not [n for n in os.listdir(nodes / "node0" / "env" / "tmp") if ".bpcp-" in n]
    failed = bpcp(sock, str(tmp_path / "input.txt"), str(tmp_path / "copy"))
    assert failed.returncode == 1 and "no node named" in failed.stderr
    failed = bpcp(sock, str(tmp_path / "input.txt"), "0:relative")
    assert failed.returncode == 1 and "must be absolute" in failed.stderr
