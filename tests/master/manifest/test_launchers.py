"""What an MPI daemon's job brings besides the daemon: its launcher's programs, the agent it checks for,
and what the MPI libraries load at run time."""

import os
import subprocess

from beoboot.master.manifest import launchers
from beoboot.master.manifest.runtimefiles import RUNTIME_FILES, runtime_files

OPEN_MPI, HYDRA = launchers.LAUNCHERS


def process(launcher, *argv):
    return launchers.LauncherProcess(launcher, argv, "/home/u", "/usr/bin:/bin")


PROGRAMS = {"./ring": "/home/u/ring", "./a": "/home/u/a", "python3": "/usr/bin/python3", "bpsh": "/usr/bin/bpsh"}
PROGRAMS |= {"ssh": "/usr/bin/ssh", "node": "/usr/bin/node", "ls": "/usr/bin/ls", "4": None}


def apps(launcher, *argv):
    """applications() with PROGRAMS standing for what the launcher's PATH and directory hold."""
    return launchers.applications(process(launcher, *argv), PROGRAMS.get)


def test_open_mpi_applications_pass_by_options_and_the_agent():
    argv = ("mpirun", "--mca", "plm_rsh_agent", "bpsh", "--host", "n0,n1", "--map-by", "node", "-np", "4")
    assert apps(OPEN_MPI, *argv, "./ring", "-v", "ls") == [("/home/u/ring", ("./ring", "-v", "ls"))]
    assert apps(OPEN_MPI, "mpirun", "--oversubscribe", "./ring") == [("/home/u/ring", ("./ring",))]
    assert apps(OPEN_MPI, "mpirun", "-np", "2") == []


def test_mpmd_parts_each_bring_their_program():
    argv = ("mpirun", "-np", "2", "./a", "x", ":", "-np", "2", "python3", "b.py")
    assert apps(OPEN_MPI, *argv) == [("/home/u/a", ("./a", "x")), ("/usr/bin/python3", ("python3", "b.py"))]


def test_hydra_applications_pass_by_its_launcher_options():
    argv = ("mpiexec", "-launcher", "ssh", "-launcher-exec", "bpsh", "-genv", "A", "ls", "-n", "4", "./ring")
    assert apps(HYDRA, *argv) == [("/home/u/ring", ("./ring",))]


def test_a_long_command_line_costs_one_look_up_per_part():
    asked = []
    found = launchers.applications(
        process(OPEN_MPI, "mpirun", "./ring", *map(str, range(100_000))), lambda w: asked.append(w) or "/r"
    )
    assert asked == ["./ring"] and len(found[0][1]) == 100_001


def test_the_agent_orted_checks_for():
    text = ' orted -mca ess "env" --mca plm_rsh_agent "bpsh -q" -mca plm "rsh"'
    assert launchers.agent_named(text, {}, OPEN_MPI) == "bpsh"
    assert launchers.agent_named(" orted", {"OMPI_MCA_plm_rsh_agent": "bpsh"}, OPEN_MPI) == "bpsh"
    assert launchers.agent_named(" orted", {}, OPEN_MPI) == ""
    assert launchers.agent_named("hydra_pmi_proxy", {"OMPI_MCA_plm_rsh_agent": "bpsh"}, HYDRA) == ""


def test_daemons_name_their_launcher():
    assert launchers.launcher_for("/usr/bin/orted") is OPEN_MPI
    assert launchers.launcher_for("/usr/bin/hydra_pmi_proxy") is HYDRA
    assert launchers.launcher_for("/usr/bin/ssh") is None


def test_the_launcher_is_found_above_bpsh_only_when_it_is_one():
    """A process named like a launcher (argv[0]) with a child standing for bpsh; another user's or an
    unknown parent gives nothing."""
    script = "sleep 30 & echo $!; wait"
    parent = subprocess.Popen(
        ["bash", "-c", f"exec -a orterun bash -c '{script}' orterun --mca x y ./ring"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    try:
        found = launchers.find_launcher(child, os.getuid(), OPEN_MPI)
        assert found is not None and found.argv[0] == "orterun" and "--mca" in found.argv and found.argv[-1] == "./ring"
        assert found.cwd == os.getcwd() and found.path_env == os.environ.get("PATH", "")
        assert launchers.find_launcher(child, os.getuid() + 1, OPEN_MPI) is None
        assert launchers.find_launcher(child, os.getuid(), HYDRA) is None
    finally:
        os.kill(child, 9)
        parent.wait()


def test_run_time_files_are_relative_to_the_librarys_directory(tmp_path):
    lib = tmp_path / "lib"
    (lib / "openmpi/lib/openmpi3").mkdir(parents=True)
    real = lib / "libopen-pal.so.40.30.2"
    real.write_bytes(b"")
    found = runtime_files(str(real))
    assert str(lib / "openmpi/lib/openmpi3") in found
    assert all(os.path.lexists(path) for path in found)  # only those the master has
    assert runtime_files(str(lib / "libopen-pal.so.4")) == []  # another soname
    assert "libucs.so.0" in RUNTIME_FILES and "libpmix.so.2" in RUNTIME_FILES
