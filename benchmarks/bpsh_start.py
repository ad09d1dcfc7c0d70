"""How long `bpsh 0 /bin/true` takes, cached, with each client: the compiled one and the Python one."""

#     .venv/bin/python benchmarks/bpsh_start.py [--runs 300] [--nodes 3]
#
# Starts its own beoserv (loopback, free port) and `python -m stage3.simnode` nodes, compiles
# beoboot/master/bpsh/fast/bpsh.c into its scratch directory, runs each command once to fill the node's
# cache, then times them taking turns (bpsh_vs_ssh.time_commands: spawn to reap, stdin and stdout on
# /dev/null). Needs root (simulated nodes chroot their jobs). Figures, median and 90th percentile:
#   * /bin/true alone: the floor, what starting any program costs here;
#   * the compiled client (what build.py makes .venv/bin/bpsh, and `pip install` makes bpsh);
#   * the compiled client given an ssh-style command line (clush's -oBatchMode=yes: /bin/sh -c on the node);
#   * the compiled client given a line it leaves to the Python client (-t 60): the exec's cost on top;
#   * the Python client as build.py's .venv/bin/bpsh ran it before (python3 -IS executable.py);
#   * the Python client as pip's console-script wrapper runs it (the venv's python, site and all);
# and the ratio of each to the compiled client's median. Then each client alone: against a stand-in for
# beoserv that answers every request at once, which leaves the client's own start and exit.

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from bpsh_vs_ssh import PYTHON, start_master, start_simnodes, stop, time_commands

from beoboot.master.bpsh.fast.compile import EXECUTABLE_PY, compile_client, venv_fallback

CONSOLE_SCRIPT = "import sys; from beoboot.master.bpsh.client import main; sys.exit(main())"  # as pip writes it


def answer_at_once(path: Path) -> socket.socket:
    """A stand-in for beoserv's bpsh socket: takes each request and its descriptors, answers status 0."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                for fd in fds:
                    os.close(fd)
                conn.send(b"X0")

    threading.Thread(target=serve, daemon=True).start()
    return listener


def report(title: str, names: list[str], times: list[list[float]], reference: int) -> None:
    medians = [statistics.median(spent) for spent in times]
    print(title)
    print(f"{'':48} {'median':>9} {'p90':>9} {'/compiled':>10}")
    for name, spent, median in zip(names, times, medians):
        p90 = statistics.quantiles(spent, n=10)[-1]
        print(f"{name:48} {median * 1e3:7.2f}ms {p90 * 1e3:7.2f}ms {median / medians[reference]:9.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpsh-start-") as scratch:
        work = Path(scratch)
        compiled = compile_client(work / "bpsh", venv_fallback(PYTHON))
        master, url = start_master(work)
        nodes = None
        try:
            nodes = start_simnodes(work, url, args.nodes, 0)
            job = ["--socket", str(work / "bpsh.sock"), "0", "/bin/true"]
            commands = {
                "/bin/true alone (the floor)": ["/bin/true"],
                "bpsh compiled": [str(compiled), *job],
                "bpsh compiled, ssh-style": [str(compiled), "-oBatchMode=yes", *job],
                "bpsh compiled, passed on (-t 60)": [str(compiled), "-t", "60", *job],
                "bpsh python3 -IS (the old .venv/bin/bpsh)": [PYTHON, "-IS", str(EXECUTABLE_PY), *job],
                "bpsh pip console script (the old pip install)": [sys.executable, "-c", CONSOLE_SCRIPT, *job],
            }
            time_commands(list(commands.values()), 3)  # fill the node's cache (/bin/true, and /bin/sh)
            times = time_commands(list(commands.values()), args.runs)
        finally:
            if nodes is not None:
                stop(nodes)
            stop(master)
        stand_in = answer_at_once(work / "stand-in.sock")
        try:
            alone = ["--socket", str(work / "stand-in.sock"), "0", "/bin/true"]
            clients = {
                "/bin/true alone (the floor)": ["/bin/true"],
                "bpsh compiled": [str(compiled), *alone],
                "bpsh python3 -IS": [PYTHON, "-IS", str(EXECUTABLE_PY), *alone],
            }
            client_times = time_commands(list(clients.values()), args.runs)
        finally:
            stand_in.close()
    report(
        f"cached `bpsh 0 /bin/true`, {args.runs} runs each, {args.nodes} simulated nodes",
        list(commands),
        times,
        1,
    )
    report("\nthe client alone, beoserv's answer at once (a stand-in)", list(clients), client_times, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
