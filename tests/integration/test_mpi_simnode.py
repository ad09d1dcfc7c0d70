"""bpsh as the remote shell of MPI launchers and parallel shells, on 4 simulated nodes: Open MPI's mpirun
(plm_rsh_agent), MPICH's mpiexec (Hydra, -launcher ssh -launcher-exec bpsh), pdsh -R exec and clush, each
with the real beoserv and `python -m stage3.simnode`. Nothing is given with --cache: the daemons, the
ranks' program (read from the launcher's command line), the MPI libraries' plug-ins and help files come
by themselves. Every simulated node is on this host, so MPI talks over loopback (Open MPI is told to use
`lo`; it leaves loopback out by default). The launchers resolve the node names they are given: beoserv
writes them into a hosts file (`hosts_file`), which the launchers see as /etc/hosts in a mount namespace
of their own, so that no name is asked of DNS."""

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from master_helpers import MasterProcess, compiled_bpsh, start_simnodes
from mpi_programs import DIES, RING

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.getuid() != 0, reason="simulated nodes chroot their jobs: needs root"),
]

NODES = "n0,n1,n2,n3"
TOOLS = ("mpicc.openmpi", "mpirun.openmpi", "mpicc.mpich", "mpiexec.mpich", "pdsh", "clush")
OPEN_MPI_LOOPBACK = ("--mca", "oob_tcp_if_include", "lo", "--mca", "btl_tcp_if_include", "lo")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: python3 build.py setup")
    work = tmp_path_factory.mktemp("mpi")
    (work / "boot").mkdir()
    hosts = work / "hosts"
    shutil.copy("/etc/hosts", hosts)
    (work / "beoserv.toml").write_text(f'hosts_file = "{hosts}"\n')
    master = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log", work / "beoserv.toml").start()
    sim = start_simnodes(master.url, work, 4)
    deadline = time.monotonic() + 10
    while " n3 " not in hosts.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield master, work
    sim.send_signal(signal.SIGTERM)
    sim.wait(10)
    master.stop()


@pytest.fixture(scope="module")
def env(cluster):
    """`bpsh` on the PATH as launchers look for it, at this master's socket: the compiled client, as
    installed (Open MPI's command lines are its own; Hydra's -x goes on to the Python client)."""
    master, work = cluster
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "bpsh").symlink_to(compiled_bpsh())
    return {
        **os.environ,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "BEOSERV_SOCKET": str(master.bpsh_socket),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",  # the tests run as root; mpirun refuses root without these
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }


@pytest.fixture(scope="module")
def programs(cluster):
    """ring and dies, built with each MPI's compiler."""
    _, work = cluster
    source = work / "src"
    source.mkdir()
    (source / "ring.c").write_text(RING)
    (source / "dies.c").write_text(DIES)
    for name in ("ring", "dies"):
        subprocess.run(["mpicc.openmpi", "-o", name, f"{name}.c"], cwd=source, check=True)
        subprocess.run(["mpicc.mpich", "-o", f"{name}.mpich", f"{name}.c"], cwd=source, check=True)
    return source


def run(argv, env, cwd, timeout=120):
    """`argv` with the cluster's hosts file as /etc/hosts (cwd's parent holds it)."""
    names = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(Path(cwd).parent / "hosts")]
    return subprocess.run([*names, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def brought_to_every_node(work: Path, path: Path) -> bool:
    return all((work / "nodes" / f"node{n}" / "env" / str(path).lstrip("/")).is_file() for n in range(4))


def test_open_mpi_ring_closes_across_four_nodes(cluster, env, programs):
    _, work = cluster
    argv = ["mpirun.openmpi", "--mca", "plm_rsh_agent", "bpsh", *OPEN_MPI_LOOPBACK, "--host", NODES, "-np", "4"]
    result = run([*argv, "./ring"], env, programs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ring closed: token 4 after 4 ranks" in result.stdout
    assert brought_to_every_node(work, programs / "ring")  # each node ran a rank: orted brought the program


def test_mpich_ring_closes_across_four_nodes(cluster, env, programs):
    """Hydra's proxies call back to `--control-port HOSTNAME:PORT`: the nodes resolve the master's name."""
    _, work = cluster
    argv = ["mpiexec.mpich", "-launcher", "ssh", "-launcher-exec", "bpsh", "-hosts", NODES, "-np", "4"]
    result = run([*argv, "./ring.mpich"], env, programs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ring closed: token 4 after 4 ranks" in result.stdout
    assert brought_to_every_node(work, programs / "ring.mpich")


def test_a_rank_killed_by_a_signal_fails_the_launcher(env, programs):
    argv = ["mpirun.openmpi", "--mca", "plm_rsh_agent", "bpsh", *OPEN_MPI_LOOPBACK, "--host", NODES, "-np", "4"]
    open_mpi = run([*argv, "./dies"], env, programs)
    assert open_mpi.returncode == 128 + signal.SIGKILL, open_mpi.stdout + open_mpi.stderr
    assert "exited on signal 9" in open_mpi.stderr
    hydra = ["mpiexec.mpich", "-launcher", "ssh", "-launcher-exec", "bpsh", "-hosts", "n0,n1", "-np", "2"]
    mpich = run([*hydra, "./dies.mpich"], env, programs)
    assert mpich.returncode != 0, mpich.stdout + mpich.stderr


def test_one_command_line_runs_through_the_masters_shell(env, programs):
    """As ssh: the pipeline's commands (echo is a builtin, tr a program) come with the job."""
    result = run(["bpsh", "2", "echo a; echo b | tr b c"], env, programs)
    assert (result.returncode, result.stdout) == (0, "a\nc\n"), result.stderr


def test_pdsh_and_clush_run_through_bpsh(env, programs):
    pdsh = run(["pdsh", "-R", "exec", "-w", "n[0-3]", "bpsh", "%h", "echo $((6 * 7)) | tr 4 x"], env, programs)
    assert pdsh.returncode == 0, pdsh.stderr
    assert sorted(pdsh.stdout.splitlines()) == [f"n{n}: x2" for n in range(4)]
    clush = run(["clush", "-O", "ssh_path=bpsh", "-w", "n[0-3]", "-b", "echo a; echo b | tr b c"], env, programs)
    assert clush.returncode == 0, clush.stderr
    assert textwrap.dedent(clush.stdout).endswith("a\nc\n") and "n[0-3]" in clush.stdout
