#!/usr/bin/env python3
"""Set-up and entry point on a fresh machine.

    python3 build.py setup  # install what is missing (packages, .venv, the cached sysroots of other releases)
    python3 build.py demo   # install what is missing, build every image, boot each stage in QEMU
    python3 build.py test   # install what is missing, lint and type-check, run the whole test suite (QEMU tests included)

Everything the project needs is installed here (Debian packages, a kernel, QEMU, a virtualenv with the
project), never by hand, so CI on a bare machine and a new developer get the same thing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"

# Debian packages: the kernel the images boot, QEMU to boot them, the bootloaders and servers of the
# boot artifacts, the compressors the kernel's initramfs decoders read, and the references tests compare
# against (ldd, modprobe, dracut, cpio, bsdtar).
APT_PACKAGES = [
    "linux-image-amd64",
    "kmod",
    "qemu-system-x86",
    "ipxe-qemu",
    "ovmf",
    "isolinux",
    "syslinux",
    "syslinux-common",
    "pxelinux",
    "ipxe",
    "grub-efi-amd64-bin",
    "grub-common",
    "mtools",
    "xorriso",
    "dosfstools",
    "e2fsprogs",
    "openssh-server",
    "openssh-client",
    "libarchive13",
    "libarchive-tools",
    "cpio",
    "xz-utils",
    "zstd",
    "lz4",
    "gzip",
    "dnsmasq-base",
    # the NFS server of tests/integration/test_site_qemu.py: nfs-ganesha runs in user space, where the
    # kernel's nfsd may be missing (a container's or a VM's kernel without it)
    "nfs-ganesha",
    "nfs-ganesha-vfs",
    "rpcbind",  # nfs-ganesha registers NFSv3 with it, and will not start without one
    "nginx-light",
    "systemd",  # systemd-analyze verifies the beoserv.service a build writes
    "iproute2",
    "dracut-core",
    "pciutils",
    "python3",
    "python3-venv",
    "gcc",
    "libc6-dev",
    "busybox",
    "tzdata",
    "perl-base",
    "perl",  # the tests compare jobs' time zone and Perl modules with the master's
    "file",  # and `file` on a node, with the magic database its library reads
    "acl",  # and jobs' access checks against files with ACLs (setfacl)
    "debootstrap",  # the sysroots of other Debian releases the tests build images from
    "clustershell",  # clush: what benchmarks/fanout.py compares bpsh -a with, and runs through bpsh
    # MPI through bpsh as its remote shell (tests/integration/test_mpi_simnode.py, benchmarks/mpi_launch.py).
    # Both MPIs side by side: their mpicc/mpirun alternatives conflict, so everything names the explicit
    # mpicc.openmpi, mpirun.openmpi, mpicc.mpich, mpiexec.mpich
    "openmpi-bin",
    "libopenmpi-dev",
    "mpich",
    "libmpich-dev",  # mpi.h for mpicc.mpich (only recommended by mpich, and recommends are not installed)
    "pdsh",  # pdsh -R exec ... bpsh %h: a parallel shell over bpsh
]

# Sysroots of other Debian releases, made once with debootstrap and kept outside the checkout (they are
# hundreds of MiB, shared by every worktree): tests build images from them to prove that a sysroot need
# not be the build host's own release (another Python, kernel, module compression).
SYSROOTS = Path(os.environ.get("BEOBOOT_SYSROOTS", "/var/cache/beoboot/sysroots"))
MIRROR = "http://deb.debian.org/debian"
# What a node image takes from a sysroot: Python (the agent), a kernel with its modules.
SYSROOT_PACKAGES = ["python3", "linux-image-amd64"]
SYSROOT_SUITES = ["trixie"]
SYSROOT_STAMP = ".beoboot-sysroot.json"  # inside the tree: present only once the tree is whole


def missing_packages() -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *APT_PACKAGES],
        capture_output=True,
        text=True,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in APT_PACKAGES if p not in installed]


def install_packages() -> None:
    missing = missing_packages()
    if not missing:
        return
    print(f"build.py: installing Debian packages: {' '.join(missing)}", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env)


def install_venv() -> None:
    stamp = VENV / ".beoboot-installed"
    project = (ROOT / "pyproject.toml").read_bytes()
    if stamp.exists() and stamp.read_bytes() == project:
        install_fast_bpsh()
        return
    print("build.py: creating the virtualenv .venv with the project", flush=True)
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # pip writes its bpsh through an existing link, which would overwrite the client file an older setup's
    # link points at
    (VENV / "bin" / "bpsh").unlink(missing_ok=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
    install_fast_bpsh()
    stamp.write_bytes(project)


def install_fast_bpsh() -> None:
    """.venv/bin/bpsh is the compiled client (beoboot/master/bpsh/fast/bpsh.c): launchers start bpsh once
    per node, and Python's own start is longer than a cached job. pip's install (setup.py) compiles one
    too; this one falls back to the client file under python3 -IS, which starts faster than through site.
    Compiled again when its source or the constants it takes from client.py changed."""
    sys.path.insert(0, str(ROOT))
    from beoboot.master.bpsh.fast import compile as fast

    executable = VENV / "bin" / "bpsh"
    sources = (fast.SOURCE, Path(fast.__file__), Path(fast.client.__file__))
    if not executable.is_symlink() and executable.exists():
        built = executable.stat().st_mtime
        falls_back_here = os.fsencode(fast.venv_fallback()[2]) in executable.read_bytes()  # not a moved checkout's
        if falls_back_here and all(source.stat().st_mtime < built for source in sources):
            return
    print(f"build.py: compiling {fast.SOURCE.relative_to(ROOT)} into {executable}", flush=True)
    executable.unlink(missing_ok=True)  # a link from an older setup: replace it, not what it points at
    fast.compile_client(executable, fast.venv_fallback())


def sysroot_recipe(suite: str) -> dict[str, object]:
    return {"suite": suite, "variant": "minbase", "packages": SYSROOT_PACKAGES, "mirror": MIRROR}


def sysroot_ready(suite: str) -> bool:
    try:
        stamp = json.loads((SYSROOTS / suite / SYSROOT_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("recipe") == sysroot_recipe(suite)


@contextlib.contextmanager
def sysroots_lock() -> Iterator[None]:
    """One debootstrap at a time: two worktrees running setup at once wait for each other."""
    SYSROOTS.mkdir(parents=True, exist_ok=True)
    with open(SYSROOTS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_tree(path: Path) -> None:
    """A tree a killed debootstrap left: its mounts (proc, sys, bind-mounted devices) are let go first, so
    the removal never reaches into the host's /proc, /sys or /dev."""
    real = os.path.realpath(path)
    mounts = []
    with open("/proc/self/mounts") as table:
        for line in table:
            point = line.split()[1].replace("\\040", " ")
            if point == real or point.startswith(real + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def install_sysroot(suite: str) -> None:
    """SYSROOTS/SUITE: a debootstrap of that release, made under a temporary name and renamed into place
    whole, so a killed setup leaves no tree that looks finished."""
    if sysroot_ready(suite):
        return
    with sysroots_lock():
        if sysroot_ready(suite):  # made by another setup while this one waited
            return
        for stale in SYSROOTS.glob(f".{suite}.*"):
            print(f"build.py: removing {stale}, left by an earlier setup", flush=True)
            remove_tree(stale)
        target = SYSROOTS / suite
        building = SYSROOTS / f".{suite}.tmp-{os.getpid()}"
        print(f"build.py: creating the {suite} sysroot {target} with debootstrap (a few minutes)", flush=True)
        started = time.monotonic()
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(SYSROOT_PACKAGES)}",
            suite,
            str(building),
            MIRROR,
        ]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(command, env=env).returncode != 0:
            raise SystemExit(
                f"build.py: debootstrap of {suite} failed (above); its log is {building}/debootstrap/debootstrap.log"
            )
        # the downloaded packages are of no use to a build
        for package in (building / "var/cache/apt/archives").glob("*.deb"):
            package.unlink()
        seconds = time.monotonic() - started
        stamp = {"recipe": sysroot_recipe(suite), "seconds": round(seconds)}
        (building / SYSROOT_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        if target.exists() or target.is_symlink():
            old = SYSROOTS / f".{suite}.old-{os.getpid()}"
            target.rename(old)
            building.rename(target)
            remove_tree(old)
        else:
            building.rename(target)
        print(f"build.py: {suite} sysroot ready in {seconds:.0f} s: {target}", flush=True)


def install_sysroots() -> None:
    if all(sysroot_ready(suite) for suite in SYSROOT_SUITES):
        return
    if os.geteuid() != 0:  # debootstrap and the trees it makes are root's: the whole step runs as root
        subprocess.run(["sudo", sys.executable, str(ROOT / "build.py"), "sysroots"], check=True)
        return
    for suite in SYSROOT_SUITES:
        install_sysroot(suite)


def setup() -> None:
    install_packages()
    install_venv()
    install_sysroots()


def demo() -> int:
    setup()
    return subprocess.run([str(VENV_PYTHON), "-m", "beoboot.vm.demo"], cwd=ROOT).returncode


def lint() -> int:
    """ruff (format and pyproject's rule set) and mypy over the code; their settings are in pyproject.toml."""
    for command in (["ruff", "format", "--check", "."], ["ruff", "check", "."], ["mypy"]):
        print(f"build.py: {' '.join(command)}", flush=True)
        status = subprocess.run([str(VENV_PYTHON), "-m", *command], cwd=ROOT).returncode
        if status != 0:
            print(f"build.py: {command[0]} found problems (above); fix them, then run the tests again", flush=True)
            return status
    return 0


def test(extra: list[str]) -> int:
    setup()
    status = lint()
    if status != 0:
        return status
    # the slowest tests named at the end: the suite's time is watched (25 minutes on CI)
    return subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-q", "--durations=25", *extra], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command == "setup":
        setup()
        return 0
    if command == "sysroots":  # setup's last step, alone (run through sudo by a user who is not root)
        install_sysroots()
        return 0
    if command == "demo":
        return demo()
    if command == "test":
        return test(argv[1:])
    if command == "lint":
        setup()
        return lint()
    print(__doc__.strip())
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
