"""Open MPI's and MPICH's rings across 2 QEMU nodes through bpsh: real nodes (PXE stage 2 -> stage 3), each
on a tap of a bridge in a network namespace this test makes (QEMU's user networking cannot connect two
guests), with beoserv, a DHCP-only dnsmasq and the launchers inside it on the bridge's address. orted and the ranks find each
other by the nodes' DHCP addresses, the ranks' program and Open MPI's plug-ins come by themselves. The
namespace is removed whatever happens; no packet leaves it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from master_helpers import BPSH_SCRIPT
from mpi_programs import RING
from netns import ip, qemu_netns_missing
from servers import free_port
from vm import BackgroundVM

from beoboot import config
from beoboot.artifacts import media
from beoboot.vm import qemu

pytestmark = pytest.mark.integration

NS = f"beoboot-mpi-{os.getpid()}"
BRIDGE = "br0"
TAPS = ("tap0", "tap1")
MASTER_ADDR = "10.99.1.1"
SUBNET = "10.99.1.0/24"
TRIES = 5  # runs of MPICH's ring that may meet MPICH's own hang in MPI_Finalize (see its test)


def _prerequisites_missing():
    return qemu_netns_missing(
        ("dnsmasq", "mpicc.openmpi", "mpirun.openmpi", "mpicc.mpich", "mpiexec.mpich"), "python3 build.py setup"
    )


def _in_ns(*cmd):
    return ["ip", "netns", "exec", NS, *map(str, cmd)]


@pytest.fixture(scope="module")
def namespace():
    why = _prerequisites_missing()
    if why:
        pytest.skip(why)
    ip("netns", "add", NS)
    try:
        ip("-n", NS, "link", "set", "lo", "up")
        ip("-n", NS, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
        ip("-n", NS, "addr", "add", f"{MASTER_ADDR}/24", "dev", BRIDGE)
        for tap in TAPS:
            ip("-n", NS, "tuntap", "add", "dev", tap, "mode", "tap")
            ip("-n", NS, "link", "set", tap, "master", BRIDGE)
            ip("-n", NS, "link", "set", tap, "up")
        ip("-n", NS, "link", "set", BRIDGE, "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@pytest.fixture(scope="module")
def cluster(namespace, tmp_path_factory):
    """A build whose master is the bridge's address, beoserv and dnsmasq in the namespace, two nodes up."""
    from beoboot.image import builder

    work = tmp_path_factory.mktemp("mpi-qemu")
    port = free_port()
    url = f"http://{MASTER_ADDR}:{port}/"
    site = work / "site.toml"
    site.write_text(f'[build]\nmaster_url = "{url}"\n')
    out = work / "out"
    out.mkdir()
    site_config = config.load(site)
    builder.build(site_config, out)
    hosts = work / "hosts"
    shutil.copy("/etc/hosts", hosts)
    (work / "beoserv.toml").write_text(f'hosts_file = "{hosts}"\n')
    log = open(work / "beoserv.log", "wb")
    beoserv = subprocess.Popen(
        _in_ns(
            sys.executable,
            "-m",
            "beoboot.master.cli",
            "beoserv",
            "--root",
            out,
            "--listen",
            f"{MASTER_ADDR}:{port}",
            "--db",
            work / "nodes.db",
            "--bpsh-socket",
            work / "bpsh.sock",
            "--config",
            work / "beoserv.toml",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    dnsmasq = subprocess.Popen(
        _in_ns(
            "dnsmasq",
            "--keep-in-foreground",
            "--port=0",
            f"--interface={BRIDGE}",
            "--bind-interfaces",
            "--dhcp-range=10.99.1.100,10.99.1.150,1h",
            f"--dhcp-leasefile={work}/leases",
            "--user=root",
            "--group=root",
            f"--pid-file={work}/dnsmasq.pid",
            "--conf-file=/dev/null",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = {a["name"]: a["sha256"] for a in manifest["artifacts"]}
    append = media.kernel_cmdline(site_config, "stage2", hashes).replace("console=ttyS0,115200", "console=ttyS0")
    stage2 = out / next(a["path"] for a in manifest["artifacts"] if a["name"] == "stage2")
    nodes = []
    try:
        for index, tap in enumerate(TAPS):
            nic = f"tap,ifname={tap},script=no,downscript=no,model=virtio-net-pci,mac=52:54:00:99:01:{index:02x}"
            cmd = qemu.qemu_command(out / "vmlinuz", stage2, append, extra=["-nic", nic])
            nodes.append(BackgroundVM(_in_ns(*cmd), work / f"node{index}.console"))
        deadline = time.monotonic() + 300
        while not all(f" n{n} " in hosts.read_text() for n in range(2)) or _log(work).count("job link up") < 2:
            assert time.monotonic() < deadline, _log(work) + "\n".join(n.console()[-3000:] for n in nodes)
            time.sleep(1)
        yield work
    finally:
        for node in nodes:
            node.stop()
        for proc in (dnsmasq, beoserv):
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        log.close()


def _log(work: Path) -> str:
    return (work / "beoserv.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def launch(cluster):
    """Run a launcher in the namespace, as the master's user would, with bpsh for ssh on its PATH and the
    cluster's names in its /etc/hosts; the ring built with both MPIs' mpicc in the current directory."""
    work = cluster
    source = work / "src"
    source.mkdir()
    (source / "ring.c").write_text(RING)
    subprocess.run(["mpicc.openmpi", "-o", "ring", "ring.c"], cwd=source, check=True)
    subprocess.run(["mpicc.mpich", "-o", "ring.mpich", "ring.c"], cwd=source, check=True)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "bpsh").symlink_to(BPSH_SCRIPT)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "BEOSERV_SOCKET": str(work / "bpsh.sock"),
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    names = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(work / "hosts")]

    def run(*launcher, timeout=300, on_timeout=lambda: None):
        """The launcher's result; past `timeout`, on_timeout() runs with the launcher still there, then the
        launcher is killed and TimeoutExpired raised."""
        with subprocess.Popen(
            _in_ns(*names, *launcher), env=env, cwd=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    on_timeout()
                finally:
                    proc.kill()
                raise
            return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    return run


def test_open_mpi_ring_closes_across_two_qemu_nodes(launch):
    mpirun = [
        "mpirun.openmpi",
        "--mca",
        "plm_rsh_agent",
        "bpsh",
        "--mca",
        "oob_tcp_if_include",
        SUBNET,
        "--mca",
        "btl_tcp_if_include",
        SUBNET,
        "--host",
        "n0,n1",
        "-np",
        "2",
        "./ring",
    ]
    result = launch(*mpirun)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ring closed: token 2 after 2 ranks" in result.stdout


def test_mpich_ring_closes_across_two_qemu_nodes(launch):
    """Hydra's proxies call back to its control port on the bridge's address (-iface), and the ranks find
    each other by the nodes' addresses."""
    hydra = ["mpiexec.mpich", "-launcher", "ssh", "-launcher-exec", "bpsh", "-iface", BRIDGE]
    # Debian's MPICH runs over UCX 1.13, whose default transports hung in MPI_Finalize in 5 runs of 29 on
    # these nodes. TCP alone hangs too, more rarely: 4 runs of 25 with the host's two cores busy, 4 of 53
    # with the ring's barrier before MPI_Finalize. It is MPICH 4.0's: MPI_Finalize disconnects from every rank,
    # then waits in a PMI barrier, where UCX makes no progress; a rank that gets there first never answers
    # the other's disconnect, which spins for good (pmodels/mpich#6596 took the barrier out, in 4.2).
    hydra += ["-genv", "UCX_TLS", "tcp,self"]
    for _attempt in range(TRIES):
        ranks_left = []
        try:
            result = launch(
                *hydra,
                "-hosts",
                "n0,n1",
                "-np",
                "2",
                "./ring.mpich",
                timeout=60,
                on_timeout=lambda: ranks_left.extend(_ranks_on(launch, node) for node in ("n0", "n1")),
            )
        except subprocess.TimeoutExpired as hung:
            # only that hang is tried again: the ring closed through bpsh, and each node still has its rank
            assert "ring closed: token 2 after 2 ranks" in str(hung.stdout), hung
            assert ranks_left == [["ring.mpich"], ["ring.mpich"]], ranks_left
            _ranks_end(launch)
            continue
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ring closed: token 2 after 2 ranks" in result.stdout
        return
    pytest.fail(f"MPICH's ranks hung in MPI_Finalize {TRIES} times running")


def _ranks_on(launch, node: str) -> list[str]:
    """The names of the MPICH ranks running on `node`, read from its /proc by a bpsh job."""
    listing = launch("bpsh", node, "sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null", timeout=60).stdout
    return [fields[1].strip("()") for fields in map(str.split, listing.splitlines()) if "(ring.mpich)" in fields]


def _ranks_end(launch) -> None:
    """The hung ranks killed (the killed mpiexec's bpsh jobs may outlive it), so the next try has the
    nodes' one CPU each."""
    for node in ("n0", "n1"):
        launch("bpsh", node, "sh", "-c", "kill -9 $(grep -l '^ring.mpich$' /proc/[0-9]*/comm | cut -d/ -f3)")
