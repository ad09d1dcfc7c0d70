"""`beoboot-build deps FILE...`: the shared libraries (and interpreter) FILE loads, found as ld.so would.

Reads the ELF files of the sysroot; never runs them (no ldd), so any tree can be inspected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from beoboot.errors import UsageError
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.sysroot import Sysroot


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deps", help="list the shared libraries programs load, read from a sysroot")
    parser.add_argument("files", nargs="*", metavar="FILE", help="an ELF file, as a path inside the sysroot")
    parser.add_argument("--sysroot", default="/", metavar="DIR", help="the tree to read (default: /)")
    parser.add_argument(
        "--dlopen",
        action="append",
        default=[],
        metavar="LIB",
        help="a library the programs dlopen (soname or path), resolved with its own needs; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print [{path, needed_by, soname}, ...] in load order")
    parser.set_defaults(func=run)


def sysroot_path(sysroot: Sysroot, file: str) -> str:
    """A FILE argument as a sysroot path: a build-host path under the sysroot is taken inside it."""
    root = str(sysroot.root)
    if root != "/" and (file == root or file.startswith(root + "/")):
        return file[len(root) :] or "/"
    return file


def run(args: argparse.Namespace) -> int:
    if not args.files and not args.dlopen:
        raise UsageError("deps needs at least one FILE or --dlopen LIB", hint="e.g. beoboot-build deps /usr/bin/ssh")
    sysroot = Sysroot(args.sysroot)
    resolver = LibraryResolver(sysroot)
    closure = resolver.closure([sysroot_path(sysroot, f) for f in args.files], dlopen=args.dlopen)
    if args.json:
        print(json.dumps([dataclasses.asdict(needed) for needed in closure], indent=2))
    else:
        for path in sorted({needed.path for needed in closure}):
            print(path)
    return 0
