"""Boot artifacts: the media and trees a node boots from (ISO, floppy, PXE tree) and the configs of the
servers that hand them out. Every writer is reproducible: the same payload and `mtime` give the same bytes.

This module holds what every writer shares: the payload, the boot-loader files Debian ships, the
templates, and the two ways bytes reach disk (an external tool with a pinned clock, an atomic rename)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from beoboot.errors import ConfigError, ToolError
from beoboot.stages import TEMPLATES_DIR

BOOT_TEMPLATES = TEMPLATES_DIR / "boot"
SERVER_TEMPLATES = TEMPLATES_DIR / "server"


@dataclass(frozen=True)
class BootPayload:
    kernel: Path
    initrd: Path
    append: str  # kernel command line

    def __post_init__(self) -> None:
        # Every boot-loader config holds the command line on one line: a newline would end it there and
        # turn the rest into boot-loader commands.
        if "\n" in self.append or "\r" in self.append:
            raise ConfigError(
                f"kernel command line {self.append!r} has a line break",
                hint="give the command line as one line of space-separated words",
            )
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if not Path(path).is_file():
                raise ConfigError(f"{what} {path} is not a file", hint="build the images first, or fix the path")


@dataclass(frozen=True)
class DebianFile:
    """A boot-loader binary that a Debian package ships; `package` is what to install when it is missing."""

    path: Path
    package: str

    def require(self) -> Path:
        if not self.path.is_file():
            raise ToolError(f"{self.path} not found", hint=f"apt-get install {self.package}")
        return self.path


ISOLINUX_BIN = DebianFile(Path("/usr/lib/ISOLINUX/isolinux.bin"), "isolinux")
PXELINUX_0 = DebianFile(Path("/usr/lib/PXELINUX/pxelinux.0"), "pxelinux")
LDLINUX_C32 = DebianFile(Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "syslinux-common")
IPXE_LKRN = DebianFile(Path("/usr/lib/ipxe/ipxe.lkrn"), "ipxe")
IPXE_EFI = DebianFile(Path("/usr/lib/ipxe/ipxe.efi"), "ipxe")
UNDIONLY_KPXE = DebianFile(Path("/usr/lib/ipxe/undionly.kpxe"), "ipxe")
GRUB_EFI_MODULES = DebianFile(Path("/usr/lib/grub/x86_64-efi/linux.mod"), "grub-efi-amd64-bin")


def render(template: str, **context: object) -> str:
    """Render `template` of templates/boot/ (boot loaders) or templates/server/ (the master's servers); a
    variable the caller forgot is an error, not an empty string."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([BOOT_TEMPLATES, SERVER_TEMPLATES]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template).render(**context)


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary name beside `out`; rename it to `out` only when the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(out: Path, text: str, *, mtime: int) -> Path:
    with atomic_output(out) as tmp:
        tmp.write_text(text)
        os.utime(tmp, (mtime, mtime))
    return out


def copy_file(source: Path, out: Path, *, mtime: int) -> Path:
    with atomic_output(out) as tmp:
        shutil.copyfile(source, tmp)
        os.utime(tmp, (mtime, mtime))
    return out


def run_tool(cmd: Sequence[str | os.PathLike[str]], *, mtime: int, package: str) -> str:
    """Run a build tool with SOURCE_DATE_EPOCH set (mtools and syslinux's installer stamp files with it)."""
    argv = [str(arg) for arg in cmd]
    if shutil.which(argv[0]) is None:
        raise ToolError(f"{argv[0]} not found", hint=f"apt-get install {package}")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(mtime), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ToolError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}",
            hint=f"check that {package} is installed and the output directory is writable",
        )
    return result.stdout


# Re-exported last: the writers import the helpers above from this package.
from beoboot.artifacts.floppy import FloppyKind, FloppyMode, FloppyResult, write_floppy  # noqa: E402
from beoboot.artifacts.iso import write_iso  # noqa: E402
from beoboot.artifacts.pxe import write_pxe_tree  # noqa: E402
from beoboot.artifacts.servers import NodeRange, parse_node_range, write_server_configs  # noqa: E402

__all__ = [
    "BootPayload",
    "FloppyKind",
    "FloppyMode",
    "FloppyResult",
    "NodeRange",
    "parse_node_range",
    "write_floppy",
    "write_iso",
    "write_pxe_tree",
    "write_server_configs",
]
