"""The ELF reader and the library search against files nobody checked: a directory, a FIFO, and ELF files
whose offsets and sizes are huge or point past the end. Each gives an ElfError that names the file and
what is wrong, at once; `beoboot-build deps` prints it in one line and exits 1, without a traceback."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_elf import build_elf
from test_ldso import BASE, INTERP, make_tree, program

from beoboot.errors import ElfError, MissingLibraryError
from beoboot.resolve.elf import DT_STRSZ, parse_elf_bytes
from beoboot.resolve.ldso import LibraryResolver, is_elf, read_ld_so_conf
from beoboot.resolve.sysroot import Sysroot

HUGE = 2**64 - 1
PHDRS, PHENT = 64, 56  # where build_elf's 64-bit program headers start, and their size
P_OFFSET, P_FILESZ = 8, 32  # within one
E_PHOFF, E_PHNUM = 32, 56  # within the ELF header
PT_INTERP, PT_DYNAMIC = 3, 2


def patched(image: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def phdr_field(image: bytes, p_type: int, field: int, value: int) -> bytes:
    """`image` with one field of its (first) program header of type p_type set to value."""
    phnum = struct.unpack_from("<H", image, E_PHNUM)[0]
    for index in range(phnum):
        if struct.unpack_from("<I", image, PHDRS + index * PHENT)[0] == p_type:
            return patched(image, PHDRS + index * PHENT + field, "<Q", value)
    raise AssertionError(f"no program header of type {p_type}")


def dt_value(image: bytes, tag: int, value: int) -> bytes:
    """`image` with the value of its dynamic entry `tag` set to value."""
    offset, size = phdr(image, PT_DYNAMIC)
    for at in range(offset, offset + size, 16):
        if struct.unpack_from("<q", image, at)[0] == tag:
            return patched(image, at + 8, "<Q", value)
    raise AssertionError(f"no dynamic entry {tag}")


def phdr(image: bytes, p_type: int) -> tuple[int, int]:
    """p_offset and p_filesz of the first program header of type p_type."""
    for index in range(struct.unpack_from("<H", image, E_PHNUM)[0]):
        at = PHDRS + index * PHENT
        if struct.unpack_from("<I", image, at)[0] == p_type:
            return struct.unpack_from("<Q", image, at + P_OFFSET)[0], struct.unpack_from("<Q", image, at + P_FILESZ)[0]
    raise AssertionError(f"no program header of type {p_type}")


PROGRAM = program(needed=("libc.so.6",))

# (what is wrong, the image, what the message says)
BROKEN = [
    ("huge e_phoff", patched(PROGRAM, E_PHOFF, "<Q", HUGE), "program header table at offset 18446744073709551615"),
    ("e_phoff past the end", patched(PROGRAM, E_PHOFF, "<Q", 1 << 40), "runs past the end of the file"),
    ("huge PT_INTERP offset", phdr_field(PROGRAM, PT_INTERP, P_OFFSET, HUGE), "PT_INTERP at offset"),
    ("huge PT_INTERP size", phdr_field(PROGRAM, PT_INTERP, P_FILESZ, HUGE), "PT_INTERP is 18446744073709551615 bytes"),
    ("huge PT_DYNAMIC size", phdr_field(PROGRAM, PT_DYNAMIC, P_FILESZ, HUGE), "PT_DYNAMIC is 18446744073709551615"),
    (
        "PT_DYNAMIC past the end",
        phdr_field(PROGRAM, PT_DYNAMIC, P_OFFSET, len(PROGRAM) + 4096),
        "PT_DYNAMIC at offset .* runs past the end of the file",
    ),
    (
        "PT_DYNAMIC half past the end",
        phdr_field(PROGRAM, PT_DYNAMIC, P_OFFSET, len(PROGRAM) - 8),
        "PT_DYNAMIC at offset .* runs past the end of the file",
    ),
    ("huge DT_STRSZ", dt_value(PROGRAM, DT_STRSZ, HUGE), "DT_STRSZ 18446744073709551615 bytes.* runs past the end"),
]


@pytest.mark.parametrize(("case", "image", "message"), BROKEN, ids=[case for case, _, _ in BROKEN])
def test_a_broken_elf_file_is_an_error_naming_it_and_what_is_wrong(tmp_path, case, image, message):
    with pytest.raises(ElfError, match=message) as caught:
        parse_elf_bytes(image, "/bin/broken")
    assert "/bin/broken" in str(caught.value)
    # the same through the resolver, which reads the file with pread()
    make_tree(tmp_path, {**BASE, "/bin/broken": image})
    with pytest.raises(ElfError, match=message):
        LibraryResolver(Sysroot(tmp_path)).closure(["/bin/broken"])


def test_a_broken_library_on_the_search_path_is_passed_by(tmp_path):
    """As glibc passes by a file it cannot load and searches on."""
    sysroot = make_tree(
        tmp_path,
        {
            **BASE,
            "/bin/prog": program(needed=("libx.so.1",), runpath="/opt/bad"),
            "/opt/bad/libx.so.1": dt_value(build_elf(soname="libx.so.1"), DT_STRSZ, HUGE),
            "/usr/lib/x86_64-linux-gnu/libx.so.1": build_elf(soname="libx.so.1"),
        },
    )
    found = [n.path for n in LibraryResolver(sysroot).closure(["/bin/prog"])]
    assert "/usr/lib/x86_64-linux-gnu/libx.so.1" in found and "/opt/bad/libx.so.1" not in found


# --- files that are no files ------------------------------------------------------------------------------


def fifo_tree(root: Path) -> Sysroot:
    """A program whose RUNPATH library is a FIFO, and a FIFO where a program and ld.so.conf would be."""
    make_tree(root, {**BASE, "/opt/app/bin/prog": program(needed=("libfoo.so.1",), runpath="$ORIGIN/../lib")})
    (root / "opt/app/lib").mkdir()
    os.mkfifo(root / "opt/app/lib/libfoo.so.1")
    os.mkfifo(root / "fifo")
    (root / "etc").mkdir()
    os.mkfifo(root / "etc/ld.so.conf")
    return Sysroot(root)


def test_a_fifo_is_never_opened_for_reading(tmp_path):
    """Each of these opened the FIFO and waited for a writer for ever."""
    sysroot = fifo_tree(tmp_path)
    started = time.monotonic()
    resolver = LibraryResolver(sysroot)  # reads /etc/ld.so.conf: a FIFO is no configuration
    assert resolver.conf_dirs == [] and read_ld_so_conf(sysroot) == []
    with pytest.raises(ElfError, match="/fifo: cannot read: not a regular file \\(a FIFO\\)"):
        resolver.closure(["/fifo"])
    assert not is_elf(sysroot, "/fifo")
    with pytest.raises(MissingLibraryError, match="libfoo.so.1 needed by /opt/app/bin/prog not found") as caught:
        resolver.closure(["/opt/app/bin/prog"])
    assert "passed by /opt/app/lib/libfoo.so.1: cannot read: not a regular file (a FIFO)" in str(caught.value)
    assert time.monotonic() - started < 2


def deps(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "beoboot", "deps", *args], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("broken", ["fifo", "directory", "huge e_phoff", "PT_DYNAMIC past the end"])
def test_deps_on_a_broken_file_says_what_is_wrong_and_exits_1(tmp_path, broken):
    images = {case: image for case, image, _ in BROKEN}
    target = {"fifo": "/fifo", "directory": "/opt/app"}.get(broken, "/bin/broken")
    if target == "/bin/broken":
        make_tree(tmp_path, {**BASE, target: images[broken]})
    else:
        fifo_tree(tmp_path)
    result = deps("--sysroot", str(tmp_path), target)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"beoboot-build: error: {target}")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_deps_of_a_directory_on_the_host(tmp_path):
    result = deps(str(tmp_path))
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        1,
        f"beoboot-build: error: {tmp_path}: cannot read: not a regular file (a directory)",
    )


def test_the_interpreter_named_in_a_program_is_read_as_well(tmp_path):
    """A PT_INTERP that is a FIFO: refused by name, not waited on."""
    make_tree(tmp_path, {"/bin/prog": program(needed=())})
    (tmp_path / INTERP.lstrip("/")).parent.mkdir(parents=True)
    os.mkfifo(tmp_path / INTERP.lstrip("/"))
    with pytest.raises(ElfError, match=f"{INTERP}: cannot read: not a regular file"):
        LibraryResolver(Sysroot(tmp_path)).closure(["/bin/prog"])


def test_names_sharing_one_long_string_cannot_multiply_the_file():
    """1000 DT_NEEDED entries pointing one byte apart into one 60000-byte name: 60 MB of names from a file
    of 80 kB, unless what is held is bounded."""
    image = bytearray(build_elf(needed=("a" * 60000,) + ("",) * 999))
    offset, size = phdr(bytes(image), PT_DYNAMIC)
    shift = 0
    for at in range(offset, offset + size, 16):
        if struct.unpack_from("<q", image, at)[0] == 1:  # DT_NEEDED
            struct.pack_into("<Q", image, at + 8, 1 + shift)
            shift += 1
    started = time.monotonic()
    with pytest.raises(ElfError, match="dynamic names add up to more than 1048576 bytes"):
        parse_elf_bytes(bytes(image), "/lib/many.so")
    assert time.monotonic() - started < 1
    with pytest.raises(ElfError, match="dynamic string at offset 1 is longer than 65536 bytes"):
        parse_elf_bytes(build_elf(needed=("b" * 70000,)).replace(b"b" * 70000 + b"\0", b"b" * 70001), "/lib/long.so")
