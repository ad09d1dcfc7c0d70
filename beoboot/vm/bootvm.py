"""Boot any artifact of a build in QEMU with the options it needs: shared by `beoboot-build boot`, the
media boot tests and the PXE-vs-iPXE benchmark, so what a user tries is what the tests prove.

Parsing (what an artifact is, where its master is, which command line a stage gets) is apart from acting
(starting QEMU, serving the build directory); `plan_boot` turns the parsed facts into QEMU arguments.

The guest always gets QEMU user networking (slirp) laid out so that the master URL's host *is* the slirp
host: the guest's connections to it reach the build host's 127.0.0.1 on the same port. That is why the
default master_url, http://10.0.2.2:8080/, is the host's 127.0.0.1:8080.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import ipaddress
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from agent.schema import KERNEL, Stage
from beoboot import stages
from beoboot.artifacts.media import PXE_DIR
from beoboot.errors import ConfigError, UsageError
from beoboot.image.manifest import MANIFEST_NAME, Manifest
from beoboot.vm import qemu

PXELINUX_CFG = "pxelinux.cfg/default"
NIC_MODELS = ("e1000", "e1000e", "virtio-net-pci", "rtl8139")  # the ones the tests boot; QEMU knows more
DEFAULT_NIC = "e1000"  # QEMU ships a PXE ROM for it under both SeaBIOS and OVMF
FLOPPY_MAX_BYTES = 2_949_120  # 2.88 MB, the largest floppy
DISK_SUFFIXES = (".img", ".raw", ".usb")  # an ISO named like this is booted as a raw USB disk


class ArtifactKind(StrEnum):
    ISO = "iso"  # El Torito CD: -cdrom
    DISK = "disk"  # the isohybrid ISO (or any raw image) as a USB stick
    FLOPPY = "floppy"
    PXE_TREE = "pxe-tree"  # a directory with pxelinux.0, grubnetx64.efi, boot.ipxe
    STAGE_IMAGE = "stage-image"  # a stage's initramfs, booted with the build's kernel


class NetBoot(StrEnum):
    """How a PXE tree is booted: which first file the node's firmware is given."""

    PXELINUX = "pxelinux"  # BIOS PXE, everything over TFTP
    GRUB = "grub"  # UEFI PXE, everything over TFTP
    IPXE = "ipxe"  # QEMU's NIC ROM is iPXE: boot.ipxe, kernel and initrd over HTTP


# --- parsing -------------------------------------------------------------------------------------------

# Magic numbers of the compressors a stage image may use (and of an uncompressed newc cpio).
_INITRAMFS_MAGIC = (b"\x28\xb5\x2f\xfd", b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x04\x22\x4d\x18", b"070701")


def sniff(head: bytes, size: int) -> ArtifactKind | None:
    """What a file is from its first 64 KiB and its size; None: not a bootable artifact."""
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":  # ISO 9660 primary volume descriptor
        return ArtifactKind.ISO
    if head.startswith(_INITRAMFS_MAGIC):
        return ArtifactKind.STAGE_IMAGE
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        return ArtifactKind.FLOPPY if size <= FLOPPY_MAX_BYTES else ArtifactKind.DISK
    return None


@dataclass(frozen=True)
class BootTarget:
    kind: ArtifactKind
    path: Path  # the file, or the PXE tree directory
    build_dir: Path | None  # the directory with manifest.json that the master serves at its root


def find_build_dir(path: Path) -> Path | None:
    """The build directory holding `path`: it, or the nearest of its two parents with a manifest.json."""
    path = path.absolute()
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    return None


def classify(path: Path, *, usb: bool = False) -> BootTarget:
    """Find what kind of artifact `path` is. A build directory means its PXE tree."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="give an artifact of a build, e.g. out/beoboot.iso or out/pxe")
    if path.is_dir():
        tree = path / PXE_DIR if (path / MANIFEST_NAME).is_file() else path
        if not (tree / "pxelinux.0").is_file():
            raise UsageError(
                f"{path} is neither a build directory nor a PXE tree (no pxelinux.0)",
                hint="give the build's output directory, its pxe/ directory, or a file in it",
            )
        return BootTarget(ArtifactKind.PXE_TREE, tree, find_build_dir(tree))
    with open(path, "rb") as f:
        kind = sniff(f.read(0x10000), path.stat().st_size)
    if kind is None:
        raise UsageError(
            f"{path} is not an ISO, disk, floppy or stage image",
            hint="boot the build's beoboot.iso, floppy.img, pxe/ or a stage*.cpio.* image",
        )
    if kind is ArtifactKind.ISO and (usb or path.suffix in DISK_SUFFIXES):
        kind = ArtifactKind.DISK
    elif usb and kind is not ArtifactKind.DISK:
        raise UsageError(
            f"--usb: {path} is a {kind.value}, not a disk image", hint="use --usb with the ISO or a raw disk"
        )
    return BootTarget(kind, path, find_build_dir(path))


@dataclass(frozen=True)
class Master:
    """Where the guest finds the master, and where that is on the build host."""

    url: str
    host: ipaddress.IPv4Address
    port: int

    @property
    def slirp_options(self) -> str:
        """-nic user sub-options that make `host` the slirp host, so it forwards to the build host's loopback.
        The addresses slirp hands out (.15 on) and its DNS (.3) move out of the master's way."""
        net = ipaddress.IPv4Network(f"{self.host}/24", strict=False)
        last = int(self.host) - int(net.network_address)
        dhcp_start = 100 if 15 <= last < 31 else 15
        dns = 4 if last == 3 else 3
        return f"net={net},host={self.host},dhcpstart={net[dhcp_start]},dns={net[dns]}"


def parse_master_url(url: str) -> Master:
    """The master of a build ("http://10.0.2.2:8080/"); its host must be an IPv4 address for user networking."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"master URL {url!r} is not http://HOST[:PORT]/", hint="set [build] master_url and rebuild")
    try:
        host = ipaddress.IPv4Address(parts.hostname)
        port = parts.port or 80
    except ValueError as err:
        raise ConfigError(
            f"master URL {url!r}: {err}", hint="the boot command needs an IPv4 address in master_url; rebuild with one"
        ) from None
    if host.is_loopback or host.is_unspecified or host.is_multicast:
        raise ConfigError(
            f"master URL {url!r}: {host} cannot be a master on the nodes' network",
            hint="use the master's address as the nodes see it, e.g. http://10.0.2.2:8080/",
        )
    return Master(url, host, port)


_APPEND_LINE = re.compile(r"^\s*APPEND\s+(.*)$", re.MULTILINE)


def parse_pxelinux_append(text: str) -> str:
    """The kernel command line in a pxelinux.cfg (the command line of the stage a build's PXE tree boots)."""
    found = _APPEND_LINE.search(text)
    if found is None:
        raise ConfigError("pxelinux.cfg has no APPEND line", hint="rebuild: the build writes pxe/pxelinux.cfg/default")
    return found.group(1).strip()


def command_line_word(cmdline: str, key: str) -> str | None:
    """The value of `key=` on a kernel command line, or None."""
    for word in cmdline.split():
        name, eq, value = word.partition("=")
        if eq and name == key:
            return value
    return None


def stage_command_line(pxe_cmdline: str, stage: Stage, hashes: dict[str, str]) -> str:
    """The command line a build gives `stage`, from the one it wrote into the PXE tree: the same words,
    with the pins of what `stage` fetches next (media.kernel_cmdline's rule)."""
    words = [w for w in pxe_cmdline.split() if not w.startswith("beoboot.pin.")]
    pins = [f"beoboot.pin.{name}={hashes[name]}" for name in stages.pins(stage) if name in hashes]
    at = next((i + 1 for i, w in enumerate(words) if w.startswith("beoboot.master=")), len(words))
    return " ".join(words[:at] + pins + words[at:])


@dataclass(frozen=True)
class BuildInfo:
    """What a boot needs from a build directory: its kernel, images and its PXE tree's command line."""

    build_dir: Path
    kernel: Path
    images: dict[str, str]  # sha256 -> stage name
    hashes: dict[str, str]  # name -> sha256, of every artifact
    pxe_cmdline: str

    @property
    def master(self) -> Master:
        url = command_line_word(self.pxe_cmdline, "beoboot.master")
        if url is None:
            raise ConfigError(f"{self.build_dir / PXE_DIR / PXELINUX_CFG} names no beoboot.master", hint="rebuild")
        return parse_master_url(url)


def read_build(build_dir: Path) -> BuildInfo:
    manifest = Manifest.from_json((build_dir / MANIFEST_NAME).read_text())
    try:
        kernel = build_dir / manifest.artifact(KERNEL).path
        cfg = (build_dir / PXE_DIR / PXELINUX_CFG).read_text()
    except (KeyError, FileNotFoundError) as err:
        raise ConfigError(
            f"{build_dir} is not a complete build ({err})", hint=f"rebuild: beoboot-build build -o {build_dir}"
        ) from None
    return BuildInfo(
        build_dir,
        kernel,
        images={a.sha256: a.name for a in manifest.artifacts if a.kind == "image"},
        hashes={a.name: a.sha256 for a in manifest.artifacts},
        pxe_cmdline=parse_pxelinux_append(cfg),
    )


def master_of_tree(tree: Path) -> Master:
    """The master a PXE tree (without its build directory) boots from, from its pxelinux.cfg."""
    cmdline = parse_pxelinux_append((tree / PXELINUX_CFG).read_text())
    url = command_line_word(cmdline, "beoboot.master")
    if url is None:
        raise ConfigError(f"{tree / PXELINUX_CFG} names no beoboot.master", hint="rebuild")
    return parse_master_url(url)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the plan: QEMU arguments --------------------------------------------------------------------------


@dataclass(frozen=True)
class BootOptions:
    uefi: bool = False
    nic: str = DEFAULT_NIC
    net_boot: NetBoot | None = None  # PXE trees: None = pxelinux under BIOS, GRUB under UEFI
    append: str = ""  # more kernel words (stage images only: media carry their own command line)
    memory_mib: int = 1024

    def __post_init__(self) -> None:
        # The model is pasted into a -nic option: a comma would add options of its own.
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.nic):
            raise UsageError(f"NIC model {self.nic!r} is not a QEMU device name", hint=f"e.g. {', '.join(NIC_MODELS)}")


@dataclass(frozen=True)
class BootPlan:
    target: BootTarget
    master: Master | None
    extra: tuple[str, ...]
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = qemu.DEFAULT_APPEND
    serve_root: Path | None = None  # what the master serves at its root, if the boot command serves it

    def command(self, memory_mib: int = 1024) -> list[str]:
        return qemu.qemu_command(self.kernel, self.initrd, self.append, memory_mib=memory_mib, extra=self.extra)


def effective_net_boot(options: BootOptions) -> NetBoot:
    if options.net_boot is not None:
        if options.net_boot is NetBoot.PXELINUX and options.uefi:
            raise UsageError(
                "pxelinux.0 is a BIOS program; it cannot boot under --uefi", hint="use --net-boot grub or ipxe"
            )
        if options.net_boot is NetBoot.GRUB and not options.uefi:
            raise UsageError(
                "grubnetx64.efi is a UEFI program; it needs --uefi", hint="add --uefi, or use pxelinux or ipxe"
            )
        return options.net_boot
    return NetBoot.GRUB if options.uefi else NetBoot.PXELINUX


def plan_boot(
    target: BootTarget, options: BootOptions, *, build: BuildInfo | None = None, master: Master | None = None
) -> BootPlan:
    """QEMU arguments that boot `target`. `build` is needed for stage images; `master` lays out the network."""
    firmware = qemu.uefi_firmware() if options.uefi else []
    nic = ["user", f"model={options.nic}"] + ([master.slirp_options] if master else [])
    path = str(target.path.absolute())
    if target.kind is ArtifactKind.ISO:
        media = ["-cdrom", path]
    elif target.kind is ArtifactKind.DISK:
        # A USB stick on xHCI, as a node would boot one; snapshot=on: the guest never writes the artifact.
        media = [
            "-device",
            "qemu-xhci,id=xhci",
            "-drive",
            f"if=none,id=stick,format=raw,snapshot=on,file={path}",
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,bootindex=1",
        ]
    elif target.kind is ArtifactKind.FLOPPY:
        if options.uefi:
            raise UsageError("OVMF cannot boot a floppy", hint="boot the floppy without --uefi")
        media = ["-drive", f"if=floppy,format=raw,snapshot=on,file={path}", "-boot", "a"]
    elif target.kind is ArtifactKind.PXE_TREE:
        way = effective_net_boot(options)
        if way is NetBoot.IPXE:
            if master is None:
                raise UsageError(f"iPXE needs the master URL of {target.path}", hint="boot the build's pxe/ directory")
            nic.append(f"bootfile={master.url.rstrip('/')}/{PXE_DIR}/boot.ipxe")
        else:
            if "," in path:  # QEMU's option parser would split the path there
                raise UsageError(
                    f"TFTP root {path} contains a comma", hint="copy or link the tree to a path without one"
                )
            nic += [f"tftp={path}", "bootfile=" + ("grubnetx64.efi" if way is NetBoot.GRUB else "pxelinux.0")]
        media = ["-boot", "n"]
    else:
        if build is None:
            raise UsageError(
                f"{target.path} is a stage image outside a build directory",
                hint="boot it from the build's output directory, where vmlinuz and manifest.json are",
            )
        stage = build.images.get(file_sha256(target.path))
        if stage is None:
            raise UsageError(
                f"{target.path} is not an image of the build in {build.build_dir}",
                hint="rebuild, or boot an image listed in its manifest.json",
            )
        append = stage_command_line(build.pxe_cmdline, Stage(stage), build.hashes)
        # QEMU's -serial is ttyS0; the console= of the build stays (a node's may be another port).
        append = " ".join(filter(None, [append, options.append]))
        extra = (*firmware, "-nic", ",".join(nic))
        return BootPlan(target, master, extra, build.kernel, target.path, append, build.build_dir)
    serve_root = target.build_dir or (target.path.parent if target.kind is ArtifactKind.PXE_TREE else None)
    return BootPlan(target, master, (*firmware, *media, "-nic", ",".join(nic)), serve_root=serve_root)


def plan_artifact(path: Path, options: BootOptions = BootOptions(), *, usb: bool = False) -> BootPlan:
    """classify + read the build + plan_boot: the whole parse for one artifact path."""
    target = classify(path, usb=usb)
    build = read_build(target.build_dir) if target.build_dir else None
    if build is not None:
        master: Master | None = build.master
    elif target.kind is ArtifactKind.PXE_TREE:
        master = master_of_tree(target.path)
    else:
        master = None
    return plan_boot(target, options, build=build, master=master)


# --- acting --------------------------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass  # the guest's serial console is on the same terminal


@contextlib.contextmanager
def serve_directory(root: Path, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `root` read-only on host:port with Python's threaded http.server (a convenience for one run,
    not a master: the real one is nginx with the build's server/nginx.conf); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="beoboot-boot-http", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def master_for(plan: BootPlan, *, serve: bool = True) -> Iterator[str | None]:
    """Make sure something answers on the master port for the run: whatever listens there already (nginx,
    beoserv), else the build directory served by serve_directory. Yields a note for the user, or None."""
    if not serve or plan.master is None or plan.serve_root is None or port_in_use(plan.master.port):
        yield None
        return
    with serve_directory(plan.serve_root, plan.master.port) as url:
        yield f"serving {plan.serve_root} at {url} (the master {plan.master.url} as the guest sees it)"


def boot(
    plan: BootPlan,
    expect: str | Sequence[str] = (),
    *,
    timeout: float = 180.0,
    memory_mib: int = 1024,
    wrap: Sequence[str] = (),
    echo: qemu.Echo | None = None,
) -> qemu.BootResult:
    """Run the plan's QEMU until `expect` is seen, QEMU exits or time is up; `wrap` prefixes the command
    (e.g. `ip netns exec NS`)."""
    return qemu.run([*wrap, *plan.command(memory_mib)], expect, timeout=timeout, echo=echo)
