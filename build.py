#!/usr/bin/env python3
"""Set-up and entry point on a fresh machine.

    python3 build.py demo   # install what is missing, build every image, boot each stage in QEMU
    python3 build.py test   # install what is missing, lint and type-check, run the whole test suite (QEMU tests included)

Everything the project needs is installed here (Debian packages, a kernel, QEMU, a virtualenv with the
project), never by hand, so CI on a bare machine and a new developer get the same thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    "nginx-light",
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
]


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
        return
    print("build.py: creating the virtualenv .venv with the project", flush=True)
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # pip writes its wrapper through an existing link, which would overwrite the client file it points at
    (VENV / "bin" / "bpsh").unlink(missing_ok=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
    install_fast_bpsh()
    stamp.write_bytes(project)


def install_fast_bpsh() -> None:
    """pip's wrapper for `bpsh` starts the venv's Python with site and the editable-install finder: 20 ms
    before bpsh runs, for a job that takes 3. The client needs nothing outside the interpreter, so
    .venv/bin/bpsh is the client file itself (it runs as python3 -IS)."""
    wrapper = VENV / "bin" / "bpsh"
    tmp = wrapper.with_name("bpsh.beoboot-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(ROOT / "beoboot" / "master" / "bpsh" / "executable.py")
    tmp.replace(wrapper)


def setup() -> None:
    install_packages()
    install_venv()


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
    return subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-q", *extra], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command == "setup":
        setup()
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
