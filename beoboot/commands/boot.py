"""`beoboot-build boot ARTIFACT`: try any artifact of a build in QEMU (TCG) in one command."""

from __future__ import annotations

import argparse
import shlex
import sys

from beoboot.log import log
from beoboot.vm import bootvm

EPILOG = """\
ARTIFACT is a file or directory of a build:
  beoboot.iso           CD-ROM (-cdrom); with --usb, or named *.img/*.raw, the same isohybrid as a USB stick
  floppy.img            floppy (-boot a); the network booster fetches stage 2 from the master over HTTP
  pxe/ or the build dir network boot through QEMU's DHCP/TFTP: pxelinux.0 (BIOS), grubnetx64.efi (--uefi),
                        or --net-boot ipxe: QEMU's iPXE ROM fetches pxe/boot.ipxe over HTTP
  stage*.cpio.*         -kernel vmlinuz -initrd IMAGE with the stage's command line from the build

The guest's serial console is shown here; it has virtio-rng and user networking in which the build's
master_url host is the build host (http://10.0.2.2:8080/ is this host's 127.0.0.1:8080). If nothing
listens on the master port, the build directory itself is served there for the run by Python's threaded
http.server (a convenience for trying artifacts, not a master: use nginx with server/nginx.conf for nodes).
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "boot",
        help="boot an artifact (ISO, floppy, PXE tree, stage image) in QEMU",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help="a file or directory of a build (see below)")
    parser.add_argument("--uefi", action="store_true", help="boot with OVMF (UEFI) instead of SeaBIOS")
    parser.add_argument(
        "--nic",
        metavar="MODEL",
        default=bootvm.DEFAULT_NIC,
        help=f"QEMU NIC model (default {bootvm.DEFAULT_NIC}; e.g. {', '.join(bootvm.NIC_MODELS)})",
    )
    parser.add_argument("--usb", action="store_true", help="attach the image as a USB stick (raw disk)")
    parser.add_argument(
        "--net-boot",
        choices=[w.value for w in bootvm.NetBoot],
        help="PXE tree: what the firmware boots (default pxelinux, or grub with --uefi)",
    )
    parser.add_argument(
        "--append", metavar="WORDS", default="", help="more kernel words for a stage image, e.g. beoboot.smoke"
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=None,
        help="stop QEMU after S seconds (default: run until the guest powers off or Ctrl-C)",
    )
    parser.add_argument(
        "--expect",
        metavar="REGEX",
        action="append",
        default=[],
        help="stop when the console shows REGEX (repeatable); exit 0 only if every one was seen",
    )
    parser.add_argument("--no-serve", action="store_true", help="never serve the build directory")
    parser.add_argument("--dry-run", action="store_true", help="print the QEMU command and exit")
    parser.add_argument("-m", "--memory", metavar="MIB", type=int, default=1024, help="guest memory (default 1024)")
    parser.set_defaults(func=run)


def _echo(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def run(args: argparse.Namespace) -> int:
    options = bootvm.BootOptions(
        uefi=args.uefi,
        nic=args.nic,
        net_boot=bootvm.NetBoot(args.net_boot) if args.net_boot else None,
        append=args.append,
        memory_mib=args.memory,
    )
    plan = bootvm.plan_artifact(args.artifact, options, usb=args.usb)
    command = plan.command(args.memory)
    if args.dry_run:
        print(shlex.join(command))
        return 0
    log.info("booting %s %s", plan.target.kind.value, plan.target.path)
    with bootvm.master_for(plan, serve=not args.no_serve) as note:
        if note:
            log.info("%s", note)
        result = bootvm.boot(
            plan, args.expect, timeout=args.timeout or float("inf"), memory_mib=args.memory, echo=_echo
        )
    if result.console and not result.console.endswith("\n"):
        print(flush=True)  # the guest's last line may be unfinished; the note below starts its own
    if args.expect:
        log.info("%s after %.1f s", "matched" if result.matched else "NOT matched", result.seconds)
        return 0 if result.matched else 1
    if result.exit_code is None:
        log.info("stopped QEMU after %.1f s", result.seconds)
        return 0
    return 0 if result.exit_code == 0 else 1
