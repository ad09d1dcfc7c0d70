"""`mpirun -np N` of a hello program over bpsh on N simulated nodes, beside mpirun over ssh, in one run."""

#     .venv/bin/python benchmarks/mpi_launch.py [--nodes 64] [--runs 3]
#
# Starts its own beoserv, N simulated nodes (`python -m stage3.simnode`) and an OpenSSH sshd on a loopback
# port with a generated key (bpsh_vs_ssh.start_sshd), builds hello.c with mpicc.openmpi, and times Open MPI's
# mpirun from start to exit:
#   * over bpsh: `--mca plm_rsh_agent bpsh --host n0,...` (the first run, which fills the nodes' caches,
#     apart; then --runs cached runs);
#   * over ssh: `--mca plm_rsh_agent "ssh -F CONFIG" --host t0,...`, where CONFIG sends every one of the N
#     target names to the one sshd on 127.0.0.1 (N loopback targets: N ssh connections, logins and orteds).
# Both keep MPI on loopback (oob and btl on `lo`), and resolve their targets' names from a hosts file that
# mpirun sees as /etc/hosts in a mount namespace of its own (beoserv writes the nodes' names into it, its
# `hosts_file`; the ssh targets are t0 -> 127.2.0.1 ...: addresses of no interface, which mpirun would take
# for itself), so no name is asked of DNS. Needs root (simulated nodes chroot their jobs) and the
# packages build.py installs (openmpi-bin, libopenmpi-dev, openssh-server).

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bpsh_vs_ssh import compiled_bpsh, start_master, start_simnodes, start_sshd, stop

HELLO = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("hello from rank %d of %d\n", rank, size);
    MPI_Finalize();
    return 0;
}
"""
LOOPBACK = ["--mca", "oob_tcp_if_include", "lo", "--mca", "btl_tcp_if_include", "lo"]


def timed_mpirun(argv: list[str], env: dict[str, str], cwd: Path, ranks: int) -> float:
    """Seconds from starting mpirun to its exit; every rank must have said hello."""
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    spent = time.perf_counter() - start
    hellos = result.stdout.count("hello from rank")
    if result.returncode != 0 or hellos != ranks:
        raise SystemExit(
            f"{' '.join(argv[:4])} ...: status {result.returncode}, {hellos} of {ranks} hellos\n{result.stderr[-3000:]}"
        )
    return spent


def ssh_config(work: Path, client: list[str]) -> Path:
    """An ssh config that sends every host name to the loopback sshd with the benchmark's key (from the
    command line bpsh_vs_ssh.start_sshd gives: ssh -q -i KEY -p PORT -o ... root@127.0.0.1)."""
    key, port = client[client.index("-i") + 1], client[client.index("-p") + 1]
    config = work / "ssh" / "config"
    config.write_text(
        f"Host *\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  BatchMode yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.getuid() != 0:
        raise SystemExit("run as root: simulated nodes chroot their jobs")
    for tool in ("mpicc.openmpi", "mpirun.openmpi"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}: python3 build.py setup")
    with tempfile.TemporaryDirectory(prefix="mpi-bench-") as tmp:
        work = Path(tmp)
        (work / "hello.c").write_text(HELLO)
        subprocess.run(["mpicc.openmpi", "-o", "hello", "hello.c"], cwd=work, check=True)
        bin_dir = compiled_bpsh(work).parent
        hosts = work / "hosts"
        targets = "".join(f"127.2.{(i + 1) >> 8}.{(i + 1) & 0xFF} t{i}\n" for i in range(args.nodes))
        hosts.write_text(Path("/etc/hosts").read_text() + targets)
        (work / "beoserv.toml").write_text(f'hosts_file = "{hosts}"\n')
        master, url = start_master(work, config=work / "beoserv.toml")
        procs = [master]
        try:
            procs.append(start_simnodes(work, url, args.nodes, 0))
            sshd, client = start_sshd(work)
            procs.append(sshd)
            # sshd drops unauthenticated connections past MaxStartups (10 by default): mpirun opens N at once
            config = ssh_config(work, client)
            sshd_config = work / "ssh" / "sshd_config"
            sshd_config.write_text(
                sshd_config.read_text() + f"MaxStartups {args.nodes * 2}\nMaxSessions {args.nodes * 2}\n"
            )
            stop(sshd)
            procs.remove(sshd)
            procs.append(
                subprocess.Popen(
                    [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)],
                    stderr=open(work / "ssh" / "sshd.log", "ab"),
                )
            )
            time.sleep(0.5)
            env = {
                **os.environ,
                "PATH": f"{bin_dir}:/usr/bin:/bin",
                "BEOSERV_SOCKET": str(work / "bpsh.sock"),
                "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            }
            n = args.nodes
            over_bpsh = [
                "mpirun.openmpi",
                "--mca",
                "plm_rsh_agent",
                "bpsh",
                *LOOPBACK,
                "--host",
                ",".join(f"n{i}" for i in range(n)),
                "-np",
                str(n),
                "./hello",
            ]
            over_ssh = [
                "mpirun.openmpi",
                "--mca",
                "plm_rsh_agent",
                f"ssh -F {config}",
                *LOOPBACK,
                "--host",
                ",".join(f"t{i}" for i in range(n)),
                "-np",
                str(n),
                "./hello",
            ]
            deadline = time.monotonic() + 30
            while f" n{n - 1} " not in hosts.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            names = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]
            over_bpsh, over_ssh = [*names, *over_bpsh], [*names, *over_ssh]
            cold = timed_mpirun(over_bpsh, env, work, n)
            bpsh_times, ssh_times = [], []
            for _ in range(args.runs):  # taking turns, so that a slow spell of this shared machine hits both
                bpsh_times.append(timed_mpirun(over_bpsh, env, work, n))
                ssh_times.append(timed_mpirun(over_ssh, env, work, n))
        finally:
            for proc in reversed(procs):
                stop(proc)
    bpsh_median, ssh_median = statistics.median(bpsh_times), statistics.median(ssh_times)
    print(f"mpirun -np {n} hello over bpsh, {n} simulated nodes, cold caches  {cold:7.2f} s")
    print(
        f"mpirun -np {n} hello over bpsh, {n} simulated nodes, cached       {bpsh_median:7.2f} s median"
        f"  (min {min(bpsh_times):.2f}, n={len(bpsh_times)})"
    )
    print(
        f"mpirun -np {n} hello over ssh, {n} loopback targets               {ssh_median:7.2f} s median"
        f"  (min {min(ssh_times):.2f}, n={len(ssh_times)})"
    )
    print(f"ssh / bpsh: {ssh_median / bpsh_median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
