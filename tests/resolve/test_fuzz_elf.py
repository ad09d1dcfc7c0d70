"""Fuzzing the ELF reader and the library search: any bytes, and a real program (/bin/true) with header,
program header and dynamic fields overwritten by huge and boundary values, give data or an ElfError (or
MissingLibraryError, when the names no longer resolve), in bounded time. The resolver reads the mutated file
from disk, beside a copy of the real interpreter and libc, as `beoboot-build deps` and beoserv read files."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beoboot.errors import ElfError, MissingLibraryError
from beoboot.resolve.elf import ELF_MAGIC, ElfInfo, parse_elf_bytes
from beoboot.resolve.ldso import LibraryResolver
from beoboot.resolve.sysroot import Sysroot

TRUE = "/bin/true"
SECONDS = 2.0  # per example: every read is bounded by the file's size and a limit, never by a field
PROGRAM = "/bin/prog"

pytestmark = pytest.mark.skipif(not os.path.isfile(TRUE), reason="needs /bin/true")


def original() -> bytes:
    return Path(TRUE).read_bytes() if os.path.isfile(TRUE) else b""


ORIGINAL = original()


def fields(image: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of each field the reader uses in a 64-bit little-endian ELF file: e_phoff,
    e_phentsize, e_phnum; p_type, p_offset, p_vaddr, p_filesz of each program header; d_tag and d_val of
    each dynamic entry."""
    if image[:6] != ELF_MAGIC + b"\x02\x01":
        return []
    found = [(32, "<Q"), (54, "<H"), (56, "<H")]
    phoff, phentsize, phnum = struct.unpack_from("<Q", image, 32)[0], *struct.unpack_from("<HH", image, 54)
    for index in range(phnum):
        at = phoff + index * phentsize
        found += [(at, "<I"), (at + 8, "<Q"), (at + 16, "<Q"), (at + 32, "<Q")]
        p_type, p_offset, p_filesz = (
            struct.unpack_from("<I", image, at)[0],
            *struct.unpack_from("<Q", image, at + 8),
            struct.unpack_from("<Q", image, at + 32)[0],
        )
        if p_type == 2:  # PT_DYNAMIC
            found += [(entry + part, "<Q") for entry in range(p_offset, p_offset + p_filesz, 16) for part in (0, 8)]
    return found


FIELDS = fields(ORIGINAL) or [(0, "<B")]
BOUNDARIES = [
    0,
    1,
    7,
    8,
    56,
    4095,
    4096,
    2**16 - 1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    len(ORIGINAL) - 1,
    len(ORIGINAL),
    len(ORIGINAL) + 1,
]
VALUES = st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2**64 - 1))


def mutated(image: bytes, changes: list[tuple[tuple[int, str], int]], flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(image)
    for (at, fmt), value in changes:
        struct.pack_into(fmt, out, at, value & ((1 << (8 * struct.calcsize(fmt))) - 1))
    for at, byte in flips:
        out[at % len(out)] = byte
    return bytes(out)


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory) -> Sysroot:
    """The real interpreter and libc of /bin/true, copied into a tree where the mutated program goes."""
    root = tmp_path_factory.mktemp("fuzz-elf")
    for needed in LibraryResolver(Sysroot("/")).closure([TRUE])[1:]:
        target = root / needed.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(needed.path), target)
    (root / "bin").mkdir(exist_ok=True)
    return Sysroot(root)


def parsed_in_time(image: bytes) -> ElfInfo | ElfError:
    started = time.monotonic()
    try:
        result: ElfInfo | ElfError = parse_elf_bytes(image, PROGRAM)
    except ElfError as exc:
        assert PROGRAM in exc.message
        result = exc
    assert time.monotonic() - started < SECONDS
    return result


def resolved_in_time(sysroot: Sysroot, image: bytes) -> None:
    sysroot.host(PROGRAM).write_bytes(image)
    started = time.monotonic()
    try:
        LibraryResolver(sysroot).closure([PROGRAM])
    except (ElfError, MissingLibraryError):
        pass
    assert time.monotonic() - started < SECONDS


@given(st.binary(max_size=8192))
def test_any_bytes_give_data_or_an_elf_error(data):
    parsed_in_time(data)


IDENTITIES = [b"\x7fELF\x02\x01\x01", b"\x7fELF\x01\x01\x01", b"\x7fELF\x02\x02\x01"]  # 64/32-bit LSB, 64-bit MSB


@given(st.sampled_from(IDENTITIES), st.binary(max_size=4096))
def test_any_bytes_after_an_elf_identity_give_data_or_an_elf_error(identity, rest):
    parsed_in_time(identity + bytes(9) + rest)


@given(
    st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 8191), st.integers(0, 255)), max_size=8),
)
def test_a_real_program_with_overwritten_fields_gives_data_or_a_typed_error(sysroot, changes, flips):
    image = mutated(ORIGINAL, changes, flips)
    parsed_in_time(image)
    resolved_in_time(sysroot, image)


def test_the_unchanged_program_resolves(sysroot):
    """The mutations start from a file the resolver reads in full: its interpreter and libc."""
    sysroot.host(PROGRAM).write_bytes(ORIGINAL)
    found = [n.path for n in LibraryResolver(sysroot).closure([PROGRAM])]
    assert len(found) >= 3 and isinstance(parse_elf_bytes(ORIGINAL), ElfInfo)
