"""Links never carry a user past a boundary: end to end, with the real beoserv, a simulated node and bpsh
run as an ordinary user (uid 1001, set in bpsh's child as a login would).

The attack these replay: a user names a file through a link of their own (`--cache ~/evil/x`, ~/evil ->
/etc), the node makes that link in the environment root; the user then makes ~/evil a real directory
holding `passwd` and `ld.so.preload` and names those. Were the node's link followed, the agent would write
them into the environment root's /etc, and every later job (root's too) would run the user's library."""

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from master_helpers import MasterProcess, bpsh_argv, let_others_reach, start_simnodes

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot jobs, users by setuid: needs root")

USER = 1001
OTHER = 65534
# the user's library, preloaded: it says so from every process that loads it
PRELOAD_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwned(void) { fprintf(stderr, "PWNED uid=%d\n", (int)getuid()); }
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("links")
    (work / "boot").mkdir()
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log").start()
    sim = start_simnodes(master.url, work, 1)
    let_others_reach(master.bpsh_socket)
    yield master.bpsh_socket, work / "nodes" / "node0" / "env"
    sim.send_signal(signal.SIGTERM)
    sim.wait(10)
    master.stop()


@pytest.fixture
def home():
    """The user's home on the master: a directory they own, under one anyone may search."""
    top = Path(tempfile.mkdtemp(prefix="beoboot-links-", dir="/tmp"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    os.chown(home, USER, USER)
    yield home
    shutil.rmtree(top)


def as_user(uid: int, sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["/usr/bin/python3", *bpsh_argv(sock, *args)[1:]]  # the venv's python may be under /root
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, user=uid, group=uid, cwd="/")


def as_root(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bpsh_argv(sock, *args), capture_output=True, text=True, timeout=120)


def users(path: Path, text: str = "", *, mode: int = 0o644) -> Path:
    """A file, directory (text None) or link of the user's, as their own process would have made it."""
    path.write_text(text)
    path.chmod(mode)
    os.chown(path, USER, USER)
    return path


def users_link(path: Path, target: str) -> Path:
    os.symlink(target, path)
    os.lchown(path, USER, USER)
    return path


def users_dir(path: Path) -> Path:
    path.mkdir()
    os.chown(path, USER, USER)
    return path


def preload_library(home: Path) -> Path:
    lib = users_dir(home / "lib")
    source = home / "pwned.c"
    source.write_text(PRELOAD_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib / "libpwned.so"), str(source)], check=True)
    os.chown(lib / "libpwned.so", USER, USER)
    return lib / "libpwned.so"


def held(env: Path, master_path: Path | str) -> Path:
    return env / str(master_path).lstrip("/")


def agent_files(env: Path) -> dict[str, str | None]:
    """What the environment root's name files hold (None: none yet; a simulated node writes none)."""
    return {name: (env / name).read_text() if (env / name).exists() else None for name in ("etc/hosts", "etc/hostname")}


def assert_no_one_runs_the_users_library(sock: Path, env: Path) -> None:
    preload = env / "etc/ld.so.preload"
    assert not preload.exists() or "pwned" not in preload.read_text()
    assert "evil" not in (env / "etc/passwd").read_text()
    for result, who in ((as_root(sock, "0", "id", "-u"), "0"), (as_user(OTHER, sock, "0", "id", "-u"), str(OTHER))):
        assert (result.returncode, result.stdout) == (0, who + "\n"), result.stderr
        assert "PWNED" not in result.stderr and "ld.so.preload" not in result.stderr


@pytest.mark.skipif(not shutil.which("gcc"), reason="builds the user's library with gcc")
def test_a_users_link_on_the_node_never_leads_a_later_jobs_files_into_etc(cluster, home):
    """The replay. The first job brings ~/evil -> /etc as a link of the user's (not root's, as before);
    once ~/evil is the user's directory on the master, the node's link gives way to it, and the files land
    there, in the user's directory, never in the environment root's /etc."""
    sock, env = cluster
    evil = users_link(home / "evil", "/etc")
    first = as_user(USER, sock, "--cache", str(evil / "shells"), "0", "true")
    assert first.returncode == 0, first.stderr
    assert os.readlink(held(env, evil)) == "/etc"
    assert os.lstat(held(env, evil)).st_uid == USER  # the master's owner of the link

    evil.unlink()
    users_dir(evil)
    library = preload_library(home)
    users(evil / "passwd", f"root::0:0:evil:/:/bin/sh\nu:x:{USER}:{USER}:evil:/:/bin/sh\n")
    users(evil / "ld.so.preload", f"{library}\n")
    second = as_user(
        USER,
        sock,
        "--cache",
        str(evil / "passwd"),
        "--cache",
        str(evil / "ld.so.preload"),
        "--cache",
        str(library),
        "0",
        "true",
    )
    assert second.returncode == 0, second.stderr
    assert_no_one_runs_the_users_library(sock, env)
    assert (held(env, evil / "ld.so.preload")).read_text() == f"{library}\n"  # where the master has it
    assert os.stat(held(env, evil)).st_uid == USER and not os.path.islink(held(env, evil))


@pytest.mark.skipif(not shutil.which("gcc"), reason="builds the user's library with gcc")
def test_a_link_to_the_root_or_up_a_chain_of_dotdots_is_no_way_into_etc_either(cluster, home):
    """~/up -> ../../../../../.. (above the root, which inside it is the root) and ~/top -> /: the same
    replay through each."""
    sock, env = cluster
    library = preload_library(home)
    for name, target in (("up", "../" * (len(home.parts) + 3)), ("top", "/")):
        link = users_link(home / name, target)
        first = as_user(USER, sock, "--cache", str(link / "etc/shells"), "0", "true")
        assert first.returncode == 0, first.stderr
        link.unlink()
        etc = users_dir(users_dir(home / name) / "etc")
        users(etc / "ld.so.preload", f"{library}\n")
        second = as_user(USER, sock, "--cache", str(etc / "ld.so.preload"), "--cache", str(library), "0", "true")
        assert second.returncode == 0, second.stderr
        assert_no_one_runs_the_users_library(sock, env)
        assert held(env, etc / "ld.so.preload").read_text() == f"{library}\n"


@pytest.mark.skipif(not shutil.which("gcc"), reason="builds the user's library with gcc")
def test_roots_link_in_a_directory_users_may_write_is_not_roots_choice(cluster, home):
    """A root-owned link the user could swap: in a 0777 directory (not sticky), root made shared/conf ->
    /etc and root's job brought it. The user renames it away and puts their own directory there: the node's
    link, still root's, must not take the user's next files into /etc."""
    sock, env = cluster
    shared = home.parent / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    conf = shared / "conf"
    os.symlink("/etc", conf)
    assert as_root(sock, "--cache", str(conf / "shells"), "0", "true").returncode == 0
    assert os.lstat(held(env, conf)).st_uid == 0
    conf.rename(shared / "old")  # as the user could: the directory is theirs to write
    library = preload_library(home)
    users_dir(conf)
    users(conf / "ld.so.preload", f"{library}\n")
    second = as_user(USER, sock, "--cache", str(conf / "ld.so.preload"), "--cache", str(library), "0", "true")
    assert second.returncode == 0, second.stderr
    assert_no_one_runs_the_users_library(sock, env)
    assert held(env, conf / "ld.so.preload").read_text() == f"{library}\n"


@pytest.mark.parametrize("named", ["/etc/hosts", "/etc/hostname"])
def test_a_file_the_agent_keeps_is_never_a_job_path_directly_or_through_a_link(cluster, home, named):
    """The master's own /etc/hosts (or hostname) would replace the node's names for every job: refused by
    name, for root too, and nothing of that manifest is written (not even the link it brings)."""
    sock, env = cluster
    before = agent_files(env)
    link = users_link(home / "names", os.path.dirname(named))
    for result in (
        as_root(sock, "--cache", named, "0", "true"),
        as_user(USER, sock, "--cache", str(link / os.path.basename(named)), "0", "true"),
    ):
        assert result.returncode != 0
        assert f"{named} is the node's own" in result.stderr, result.stderr
    assert agent_files(env) == before
    assert not os.path.lexists(held(env, link))
