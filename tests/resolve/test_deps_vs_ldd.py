"""The resolver against glibc itself: for every dynamically linked ELF program in /usr/bin and /usr/sbin of
this machine, the set of objects found must equal what `ldd` reports (linux-vdso aside).

ldd runs on many files per call (it loops over its arguments) so the whole comparison stays near 5 seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from beoboot.errors import ElfError, MissingLibraryError
from beoboot.resolve.ldso import LibraryResolver, is_elf
from beoboot.resolve.sysroot import Sysroot

PROGRAM_DIRS = ("/usr/bin", "/usr/sbin")
VDSO_NAMES = ("linux-vdso.so.1", "linux-gate.so.1")
LDD_BATCH = 64


@dataclass
class LddReport:
    """What ldd said about one file."""

    paths: set[str] = field(default_factory=set)  # `=>` targets and the interpreter line
    not_found: set[str] = field(default_factory=set)  # names printed as "=> not found"
    static: bool = False


def parse_ldd_output(text: str, files: list[str]) -> dict[str, LddReport]:
    """Split the output of `ldd FILE...` into one report per file (with one file there is no header)."""
    reports = {f: LddReport() for f in files}
    current = reports[files[0]] if len(files) == 1 else None
    for line in text.splitlines():
        if not line.startswith("\t"):
            header = line.rstrip(":")
            current = reports.get(header, current if len(files) == 1 else None)
            continue
        if current is None:
            continue
        entry = line.strip()
        if entry in ("statically linked", "not a dynamic executable"):
            current.static = True
        elif " => " in entry:
            name, _, target = entry.partition(" => ")
            target = target.split(" (0x")[0].strip()
            if target == "not found":
                current.not_found.add(name)
            elif target and name not in VDSO_NAMES:
                current.paths.add(target)
        else:
            path = entry.split(" (0x")[0].strip()
            if path.startswith("/"):
                current.paths.add(path)
    return reports


@pytest.mark.parametrize(
    ("text", "files", "paths", "not_found", "static"),
    [
        (
            (
                "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x7f)\n"
                "\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n"
            ),
            ["/usr/bin/a"],
            {"/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2"},
            set(),
            False,
        ),
        ("\tlibfoo.so.1 => not found\n", ["/usr/bin/a"], set(), {"libfoo.so.1"}, False),
        ("\tstatically linked\n", ["/usr/bin/a"], set(), set(), True),
        (
            "/usr/bin/a:\n\tnot a dynamic executable\n/usr/bin/b:\n\t/lib/ld.so (0x1)\n",
            ["/usr/bin/a", "/usr/bin/b"],
            set(),
            set(),
            True,
        ),
    ],
)
def test_parse_ldd_output(text, files, paths, not_found, static):
    report = parse_ldd_output(text, files)[files[0]]
    assert (report.paths, report.not_found, report.static) == (paths, not_found, static)


def dynamic_programs(resolver: LibraryResolver) -> list[str]:
    """Every ELF file in PROGRAM_DIRS (links followed) that ldd would call dynamic."""
    programs = []
    for directory in PROGRAM_DIRS:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            if is_elf(resolver.sysroot, path) and not resolver.elf_info(path).statically_linked:
                programs.append(path)
    return programs


def run_ldd(files: list[str]) -> dict[str, LddReport]:
    """ldd's report for each file. ldd runs on the real path of a link: its $ORIGIN is the directory of
    the name it was given, while a program the kernel runs gets the directory of its real file
    (/usr/bin/jar -> /usr/lib/jvm/.../bin/jar with RUNPATH $ORIGIN/../lib works, but ldd says not found)."""
    real_of = {f: os.path.realpath(f) for f in files}
    reals = sorted(set(real_of.values()))
    batches = [reals[i : i + LDD_BATCH] for i in range(0, len(reals), LDD_BATCH)]

    def one(batch: list[str]) -> dict[str, LddReport]:
        done = subprocess.run(["ldd", *batch], check=False, capture_output=True, text=True, errors="surrogateescape")
        return parse_ldd_output(done.stdout, batch)

    reports: dict[str, LddReport] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for part in pool.map(one, batches):
            reports.update(part)
    return {f: reports[real_of[f]] for f in files}


@pytest.mark.skipif(shutil.which("ldd") is None, reason="ldd is not installed")
def test_every_program_resolves_as_ldd_does():
    resolver = LibraryResolver(Sysroot("/"))
    programs = dynamic_programs(resolver)
    assert len(programs) > 50, "expected a populated /usr/bin"
    reports = run_ldd(programs)

    failures = []
    by_realpath = 0
    for program in programs:
        expected = reports[program]
        if expected.static:
            continue
        try:
            found = {n.path for n in resolver.closure([program])} - {program}
        except MissingLibraryError as exc:
            if exc.library not in expected.not_found:
                failures.append(f"{program}: we miss {exc.library}; ldd found it ({sorted(expected.paths)})")
            continue
        if expected.not_found:
            failures.append(f"{program}: ldd cannot find {sorted(expected.not_found)}, we found {sorted(found)}")
            continue
        # ldd prints "$ORIGIN/../lib" paths as the loader built them; the resolver drops the "..".
        expected_paths = {os.path.normpath(p) for p in expected.paths}
        if found == expected_paths:
            continue
        if {os.path.realpath(p) for p in found} == {os.path.realpath(p) for p in expected_paths}:
            by_realpath += 1
            continue
        failures.append(
            f"{program}: only ours {sorted(found - expected_paths)}, only ldd's {sorted(expected_paths - found)}"
        )
    assert not failures, f"{len(failures)} of {len(programs)} programs differ from ldd:\n" + "\n".join(failures)
    # Equality on the loader's own path is the goal; a real-path match means the path form differs.
    assert by_realpath == 0, f"{by_realpath} programs matched ldd only after resolving links"


def test_non_elf_root_is_an_elf_error(tmp_path):
    (tmp_path / "script").write_text("#!/bin/sh\n")
    with pytest.raises(ElfError, match="script is not an ELF file"):
        LibraryResolver(Sysroot(tmp_path)).closure(["/script"])
