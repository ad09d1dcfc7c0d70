"""Time the resolver against ldd on every dynamically linked ELF program of /usr/bin and /usr/sbin.

    .venv/bin/python benchmarks/deps_vs_ldd.py [--sysroot /] [--limit N]

The resolver runs in this one process (one LibraryResolver, so parsed files and directory listings are
shared, as in an image build); ldd runs once per file, the way a build script would call it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from beoboot.errors import MissingLibraryError
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.sysroot import Sysroot

PROGRAM_DIRS = ("/usr/bin", "/usr/sbin")


def elf_programs(sysroot: Sysroot) -> list[str]:
    """Every regular file (links followed) in PROGRAM_DIRS that starts with the ELF magic."""
    found = []
    for directory in PROGRAM_DIRS:
        for name in sysroot.listdir(directory):
            path = f"{directory}/{name}"
            if sysroot.is_file(path):
                with open(sysroot.host(sysroot.resolve(path).real), "rb") as handle:
                    if handle.read(4) == b"\x7fELF":
                        found.append(path)
    return found


def time_resolver(sysroot: Sysroot, files: list[str]) -> tuple[float, list[str], int, int]:
    """Seconds for a fresh resolver to resolve each file, the dynamic ones, objects found, missing."""
    start = time.perf_counter()
    resolver = LibraryResolver(sysroot)
    dynamic, objects, missing = [], 0, 0
    for path in files:
        if resolver.elf_info(path).statically_linked:
            continue
        dynamic.append(path)
        try:
            objects += len(resolver.closure([path]))
        except MissingLibraryError:
            missing += 1
    return time.perf_counter() - start, dynamic, objects, missing


def time_ldd(files: list[str]) -> float:
    start = time.perf_counter()
    for path in files:
        subprocess.run(["ldd", path], check=False, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sysroot", default="/")
    parser.add_argument("--limit", type=int, default=0, help="only the first N programs")
    args = parser.parse_args(argv)

    sysroot = Sysroot(args.sysroot)
    files = elf_programs(sysroot)
    if args.limit:
        files = files[: args.limit]
    ours, dynamic, objects, missing = time_resolver(sysroot, files)
    if args.sysroot != "/":
        print(f"resolver: {ours:.3f} s for {len(dynamic)} programs ({objects} objects); ldd needs sysroot /")
        return 0
    theirs = time_ldd([os.path.realpath(p) for p in dynamic])
    print(
        f"{'programs':<10}{len(dynamic):>10}   ({len(files) - len(dynamic)} static skipped, {missing} with a missing library)"
    )
    print(f"{'':<10}{'seconds':>10}{'ms/file':>10}")
    print(f"{'resolver':<10}{ours:>10.3f}{ours / len(dynamic) * 1000:>10.3f}")
    print(f"{'ldd':<10}{theirs:>10.3f}{theirs / len(dynamic) * 1000:>10.3f}")
    print(f"ratio: resolver is {theirs / ours:.1f}x faster than ldd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
