"""What an MPI launcher's daemon will run on its node, which its own command line does not say.

mpirun (Open MPI's orterun) and mpiexec (MPICH's Hydra) start one daemon per node through their remote
shell (`bpsh n3 ' orted -mca ess "env" ...'`, `bpsh -x n3 '"/usr/bin/hydra_pmi_proxy" ...'`); the daemon
learns of the application from the launcher over its own connection and starts the ranks. On a node that
holds only what jobs brought, the ranks' program must come with the daemon's job. So when a job runs a
known daemon (LAUNCHERS), beoserv reads the command line of the launcher that ran bpsh (bpsh's parent, or
an ancestor when the remote shell is a wrapper script; from /proc, and only the same user's processes)
and brings every program it names, as the launcher will find it (from its working directory, on its
PATH), with what each program's job would bring (closure, interpreter, script, imports): in each MPMD
part, the first word that names a program and is neither an option nor the value of an option in the
launcher's table (`--mca plm_rsh_agent bpsh`, `-launcher ssh`, `--map-by node`, `-np 4`). An option's
value missing from the table that names a program would bring that program instead (the ranks would then
fail on the node, naming theirs: --cache brings it).

Open MPI's orted also checks, when it starts, that the remote shell agent it is told of (plm_rsh_agent)
exists, for the tree spawn it would use past 64 nodes (which through bpsh only the master can do): the
agent's file comes too, as a file only (not its interpreter: it never runs on the node).
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass

MAX_ANCESTORS = 4  # bpsh's parent, or a wrapper script's parent, ...: how far up a launcher is looked for
MAX_COMMAND_LINE = 1 << 20
MAX_PARTS = 64  # MPMD parts of one launcher's command line whose programs come along
# Options whose values no application is, common to many launchers (the hosts, counts and placements)
PLACEMENT = {"host": 1, "H": 1, "hosts": 1, "hostfile": 1, "machinefile": 1, "f": 1, "np": 1, "n": 1, "c": 1}
PLACEMENT |= {"N": 1, "npernode": 1, "ppn": 1, "map-by": 1, "rank-by": 1, "bind-to": 1, "wdir": 1, "path": 1}


@dataclass(frozen=True)
class Launcher:
    executables: frozenset[str]  # the launcher's real executable's name (mpirun.openmpi -> orterun)
    daemons: frozenset[str]  # the programs it starts on each node through the remote shell
    # options whose values are no application: name (without leading dashes) -> how many values
    valued: dict[str, int]
    # the daemon's MCA parameter naming the remote shell agent it checks for, and the variable that sets it
    agent_parameter: str = ""


LAUNCHERS = (
    Launcher(
        frozenset({"orterun", "mpirun", "mpiexec", "oshrun"}),
        frozenset({"orted"}),
        PLACEMENT | {"mca": 2, "gmca": 2, "x": 1, "launch-agent": 1, "prefix": 1, "debugger": 1, "tune": 1, "am": 1},
        agent_parameter="plm_rsh_agent",
    ),
    Launcher(
        frozenset({"mpiexec.hydra", "mpiexec.mpich", "mpirun.mpich"}),
        frozenset({"hydra_pmi_proxy"}),
        PLACEMENT
        | {
            "launcher": 1,
            "bootstrap": 1,
            "launcher-exec": 1,
            "bootstrap-exec": 1,
            "env": 2,
            "genv": 2,
            "envlist": 1,
            "genvlist": 1,
            "iface": 1,
        },
    ),
)


@dataclass(frozen=True)
class LauncherProcess:
    """The launcher that ran bpsh, as /proc shows it."""

    launcher: Launcher
    argv: tuple[str, ...]
    cwd: str
    path_env: str


def launcher_for(daemon: str) -> Launcher | None:
    """The launcher whose daemon the program `daemon` (a path) is."""
    name = posixpath.basename(daemon)
    return next((launcher for launcher in LAUNCHERS if name in launcher.daemons), None)


def find_launcher(client_pid: int, uid: int, launcher: Launcher) -> LauncherProcess | None:
    """The nearest ancestor of bpsh (`client_pid`) that runs `launcher`, when it is `uid`'s; else None."""
    pid = client_pid
    for _ in range(MAX_ANCESTORS):
        pid = _parent(pid)
        if pid <= 1 or _owner(pid) != uid:
            return None
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read(MAX_COMMAND_LINE)
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        argv = tuple(word.decode("utf-8", "surrogateescape") for word in raw.split(b"\0")[:-1])
        names = {posixpath.basename(exe), posixpath.basename(argv[0]) if argv else ""}
        if names & launcher.executables:
            return LauncherProcess(launcher, argv, cwd, _environ(pid).get("PATH", ""))
    return None


def applications(process: LauncherProcess, program: Callable[[str], str | None]) -> list[tuple[str, tuple[str, ...]]]:
    """(path, argv) of the application of each MPMD part of the launcher's command line (`mpirun -np 2 ./a
    : -np 2 ./b`): its first word that is neither an option nor the value of one of the table's options
    and that `program` finds (as the launcher would: a path, or on its PATH), with the rest of the part."""
    words = process.argv[1:]
    found: list[tuple[str, tuple[str, ...]]] = []
    index = 0
    while index < len(words) and len(found) < MAX_PARTS:
        word = words[index]
        if word.startswith("-"):
            name = word.lstrip("-").partition("=")[0]
            index += 1 + (0 if "=" in word else process.launcher.valued.get(name, 0))
            continue
        path = program(word) if word != ":" else None
        if path is None:
            index += 1
            continue
        end = words.index(":", index) if ":" in words[index:] else len(words)
        found.append((path, tuple(words[index:end])))
        index = end + 1
    return found


def agent_named(shell_text: str, env: dict[str, str], launcher: Launcher) -> str:
    """The remote shell agent the daemon's command line (or its OMPI_MCA_ variable) names: '' for none."""
    if not launcher.agent_parameter:
        return ""
    try:
        words = shlex.split(shell_text)
    except ValueError:
        words = shell_text.split()
    for before, after in zip(words, words[1:]):
        if before == launcher.agent_parameter:
            return after.split()[0] if after.split() else ""
    value = env.get("OMPI_MCA_" + launcher.agent_parameter, "")
    return value.split()[0] if value.split() else ""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # the command name (in parentheses) may hold spaces and parentheses: the fields follow the last ')'
    return int(stat.rpartition(b")")[2].split()[1])


def _owner(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(MAX_COMMAND_LINE)
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0"))
    return {name.decode(errors="replace"): value.decode("utf-8", "surrogateescape") for name, _, value in pairs}
