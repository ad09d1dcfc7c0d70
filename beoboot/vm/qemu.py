"""Start QEMU (TCG: this project's machines have no working KVM) on a kernel and an initramfs, watch the
serial console, and stop when an expected line appears or the guest powers off."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from beoboot.errors import ToolError

QEMU = "qemu-system-x86_64"
# The kernel passes unknown key=value words to init as environment variables: PYTHONHASHSEED keeps
# Python from asking getrandom() for a hash seed before the RNG is ready.
DEFAULT_APPEND = "console=ttyS0 panic=-1 loglevel=4 PYTHONHASHSEED=0"


# Called with each chunk of console output as it arrives (e.g. to show it on the terminal).
Echo = Callable[[bytes], None]


@dataclass(frozen=True)
class BootResult:
    console: str
    matched: bool
    seconds: float
    exit_code: int | None  # None: QEMU was still running when we stopped it


def qemu_command(
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str = DEFAULT_APPEND,
    *,
    memory_mib: int = 1024,
    extra: Sequence[str] = (),
    reboot: bool = False,
) -> list[str]:
    if shutil.which(QEMU) is None:
        raise ToolError(f"{QEMU} not found", hint="apt-get install qemu-system-x86 (python3 build.py setup does it)")
    cmd = [
        QEMU,
        "-machine",
        "q35,accel=tcg",
        # none of the CD-ROM, floppy and parallel port QEMU adds by itself: a diskless node has none, and the
        # CD-ROM made stage 3 ask the master for its driver in a second round, 2 s of every boot
        "-nodefaults",
        "-cpu",
        "max",
        "-m",
        str(memory_mib),
        "-smp",
        "1",
        "-display",
        "none",
        "-vga",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-device",
        "virtio-rng-pci",
    ]
    if not reboot:
        cmd.append("-no-reboot")  # a guest reboot ends QEMU, so a test sees it instead of a boot loop
    if kernel is not None:
        cmd += ["-kernel", str(kernel), "-append", append]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    if not any(arg in ("-nic", "-netdev", "-net") for arg in extra):  # no NIC unless asked for
        cmd += ["-nic", "none"]
    return cmd + list(extra)


def run(
    cmd: list[str], expect: str | Sequence[str] = (), timeout: float = 180.0, echo: Echo | None = None
) -> BootResult:
    """Run QEMU until every `expect` pattern (regular expressions) has been seen, it exits, or time is up."""
    patterns = [re.compile(p) for p in ([expect] if isinstance(expect, str) else expect)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    output = bytearray()
    matched = False
    try:
        while time.monotonic() - start < timeout:
            for _ in sel.select(timeout=0.5):
                chunk = proc.stdout.read()
                if chunk:
                    output += chunk
                    if echo is not None:
                        echo(chunk)
            text = output.decode(errors="replace")
            if patterns and all(p.search(text) for p in patterns):
                matched = True
                break
            if proc.poll() is not None:
                rest = proc.stdout.read()
                if rest:
                    output += rest
                    if echo is not None:
                        echo(rest)
                break
    finally:
        exit_code = proc.poll()
        if exit_code is None:
            proc.kill()
        proc.wait()
        sel.close()
    text = output.decode(errors="replace")
    if patterns and not matched:
        matched = all(p.search(text) for p in patterns)
    return BootResult(text, matched, time.monotonic() - start, exit_code)


def boot(
    kernel: Path,
    initrd: Path,
    expect: str | Sequence[str] = (),
    *,
    append: str = DEFAULT_APPEND,
    timeout: float = 180.0,
    memory_mib: int = 1024,
    extra: Sequence[str] = (),
) -> BootResult:
    return run(qemu_command(kernel, initrd, append, memory_mib=memory_mib, extra=extra), expect, timeout)


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")


def uefi_firmware() -> list[str]:
    """QEMU arguments that boot UEFI (OVMF, package ovmf) instead of SeaBIOS; no variable store is kept."""
    if not OVMF_CODE.is_file():
        raise ToolError(f"{OVMF_CODE} not found", hint="apt-get install ovmf")
    return ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"]
