"""`beoboot-build modules`: the kernel modules to load for names or aliases, dependencies first."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from beoboot.resolve.kmod import KernelModules
from beoboot.resolve.sysroot import Sysroot


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """--sysroot and --kernel, shared with `nics`."""
    parser.add_argument("--sysroot", metavar="DIR", default="/", help="tree to read the kernel from (default: /)")
    parser.add_argument(
        "--kernel",
        metavar="VERSION",
        help="kernel version under /lib/modules (default: the newest with a /boot/vmlinuz)",
    )


def open_kernel(args: argparse.Namespace) -> KernelModules:
    sysroot = Sysroot(args.sysroot)
    return KernelModules(sysroot, args.kernel) if args.kernel else KernelModules.latest(sysroot)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "modules",
        help="list the modules to load for module names or aliases, dependencies first",
        description="Print the module files to load, in load order, as `modprobe --show-depends` would "
        "(softdeps included, duplicates and builtin modules left out). Reads the module indexes of the sysroot; "
        "runs nothing.",
    )
    add_kernel_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print name, path, reason and cause of each module")
    parser.add_argument("names", nargs="+", metavar="ALIAS_OR_NAME", help="module name or modalias, e.g. e1000e")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kmods = open_kernel(args)
    needs = kmods.resolve(args.names)
    if args.json:
        print(json.dumps({"kernel": kmods.version, "modules": [asdict(n) for n in needs]}, indent=1))
    else:
        for need in needs:
            print(need.path)
    return 0
