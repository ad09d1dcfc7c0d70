"""The ELF reader: hand-built images for each field, and agreement with pyelftools on this machine's files."""

from __future__ import annotations

import os
import struct

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE

from beoboot.errors import ElfError
from beoboot.resolve.elf import (
    DF_1_NODEFLIB,
    DT_FLAGS_1,
    DT_NEEDED,
    DT_NULL,
    DT_RPATH,
    DT_RUNPATH,
    DT_SONAME,
    DT_STRSZ,
    DT_STRTAB,
    ET_DYN,
    ET_EXEC,
    ElfClass,
    ElfIdentity,
    parse_elf_bytes,
)

EM_X86_64, EM_386, EM_S390 = 62, 3, 22
VADDR = 0x400000  # a load address unlike the file offsets, so the strtab mapping is exercised


def build_elf(
    *,
    bits: int = 64,
    little: bool = True,
    machine: int = EM_X86_64,
    elf_type: int = ET_DYN,
    interp: str | None = None,
    needed: tuple[str, ...] = (),
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    flags_1: int = 0,
    dynamic: bool = True,
) -> bytes:
    """A minimal ELF image: header, PT_LOAD over the whole file, PT_INTERP, PT_DYNAMIC, one string table."""
    order = "<" if little else ">"
    word = "Q" if bits == 64 else "I"
    ehdr_size, phent = (64, 56) if bits == 64 else (52, 32)

    strings = bytearray(b"\0")

    def add(text: str) -> int:
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text) - 1

    tags: list[tuple[int, int]] = [(DT_NEEDED, add(n)) for n in needed]
    if soname is not None:
        tags.append((DT_SONAME, add(soname)))
    if rpath is not None:
        tags.append((DT_RPATH, add(rpath)))
    if runpath is not None:
        tags.append((DT_RUNPATH, add(runpath)))
    if flags_1:
        tags.append((DT_FLAGS_1, flags_1))

    phnum = 1 + (interp is not None) + dynamic
    interp_off = ehdr_size + phnum * phent
    interp_bytes = (interp.encode() + b"\0") if interp is not None else b""
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = strtab_off + len(strings)
    dyn_entry = struct.Struct(order + ("qQ" if bits == 64 else "iI"))
    tags += [(DT_STRTAB, VADDR + strtab_off), (DT_STRSZ, len(strings)), (DT_NULL, 0)]
    dyn_bytes = b"".join(dyn_entry.pack(t, v) for t, v in tags) if dynamic else b""
    total = dyn_off + len(dyn_bytes)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if bits == 64:
            return struct.pack(order + "IIQQQQQQ", p_type, 4, offset, VADDR + offset, 0, size, size, 8)
        return struct.pack(order + "IIIIIIII", p_type, offset, VADDR + offset, 0, size, size, 4, 4)

    phdrs = phdr(1, 0, total)
    if interp is not None:
        phdrs += phdr(3, interp_off, len(interp_bytes))
    if dynamic:
        phdrs += phdr(2, dyn_off, len(dyn_bytes))
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + bytes(9)
    ehdr = ident + struct.pack(
        order + "HHI" + word * 3 + "IHHHHHH", elf_type, machine, 1, 0, ehdr_size, 0, 0, ehdr_size, phent, phnum, 0, 0, 0
    )
    image = ehdr + phdrs + interp_bytes + bytes(strings) + dyn_bytes
    assert len(image) == total
    return image


ENUM_E_MACHINE_NAMES = {number: name for name, number in ENUM_E_MACHINE.items()}
X86_64 = ElfIdentity(ElfClass.ELF64, True, EM_X86_64)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (
            build_elf(elf_type=ET_EXEC, interp="/lib64/ld-linux-x86-64.so.2", needed=("libz.so.1", "libc.so.6")),
            {"interp": "/lib64/ld-linux-x86-64.so.2", "needed": ("libz.so.1", "libc.so.6"), "elf_type": ET_EXEC},
        ),
        (build_elf(soname="libfoo.so.1"), {"soname": "libfoo.so.1", "rpath": None, "runpath": None}),
        (build_elf(rpath="$ORIGIN/../lib:/opt/x"), {"rpath": ("$ORIGIN/../lib", "/opt/x"), "runpath": None}),
        (build_elf(runpath="${ORIGIN}", rpath="/old"), {"runpath": ("${ORIGIN}",), "rpath": ("/old",)}),
        (build_elf(flags_1=DF_1_NODEFLIB), {"nodeflib": True}),
        (build_elf(dynamic=False, elf_type=ET_EXEC), {"dynamic": False, "needed": (), "statically_linked": True}),
        (
            build_elf(bits=32, machine=EM_386, needed=("libc.so.6",)),
            {"identity": ElfIdentity(ElfClass.ELF32, True, EM_386), "needed": ("libc.so.6",)},
        ),
        (
            build_elf(little=False, machine=EM_S390, needed=("libc.so.6",), soname="libbig.so"),
            {"identity": ElfIdentity(ElfClass.ELF64, False, EM_S390), "soname": "libbig.so"},
        ),
    ],
)
def test_parse_fields(image, expected):
    info = parse_elf_bytes(image)
    for name, value in expected.items():
        assert getattr(info, name) == value, name


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"#!/bin/sh\n", "is not an ELF file"),
        (b"", "is not an ELF file"),
        (b"\x7fELF\x03\x01" + bytes(30), "unknown ELF class 3"),
        (b"\x7fELF\x02\x07" + bytes(30), "unknown ELF byte order 7"),
        (build_elf(needed=("libz.so.1",))[:100], "program header table at offset 64 .* runs past the end of the file"),
    ],
)
def test_bad_input_names_the_file(image, message):
    with pytest.raises(ElfError, match=message) as caught:
        parse_elf_bytes(image, "/usr/bin/thing")
    assert "/usr/bin/thing" in str(caught.value)


def test_string_offset_past_table_is_an_error():
    image = bytearray(build_elf(needed=("libz.so.1",)))
    # Point DT_NEEDED far past the string table.
    at = image.index(struct.pack("<qQ", DT_NEEDED, 1))
    image[at : at + 16] = struct.pack("<qQ", DT_NEEDED, 10_000)
    with pytest.raises(ElfError, match="past the string table"):
        parse_elf_bytes(bytes(image), "bad.so")


def system_elf_files(per_directory: int = 30) -> list[str]:
    """A spread of real programs and libraries: every n-th ELF file of each directory."""
    found = []
    for directory in ("/usr/bin", "/usr/sbin", "/lib/x86_64-linux-gnu"):
        if not os.path.isdir(directory):
            continue
        elves = []
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    if handle.read(4) == b"\x7fELF":
                        elves.append(path)
        found += elves[:: max(1, len(elves) // per_directory)]
    return found


def pyelftools_view(path: str) -> dict:
    """The same facts, read by pyelftools' full parser."""
    with open(path, "rb") as handle:
        elf = ELFFile(handle)
        view = {
            "interp": None,
            "needed": (),
            "soname": None,
            "rpath": None,
            "runpath": None,
            "machine": elf.header["e_machine"],
        }
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_INTERP":
                view["interp"] = segment.get_interp_name()
            elif isinstance(segment, DynamicSegment):
                needed = []
                for tag in segment.iter_tags():
                    kind = tag.entry.d_tag
                    if kind == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif kind == "DT_SONAME":
                        view["soname"] = tag.soname
                    elif kind == "DT_RPATH":
                        view["rpath"] = tuple(tag.rpath.split(":"))
                    elif kind == "DT_RUNPATH":
                        view["runpath"] = tuple(tag.runpath.split(":"))
                view["needed"] = tuple(needed)
        return view


def test_agrees_with_pyelftools_on_this_machine():
    files = system_elf_files()
    if len(files) < 10:
        pytest.skip("no ELF files on this machine")
    for path in files:
        with open(path, "rb") as handle:
            info = parse_elf_bytes(handle.read(), path)
        expected = pyelftools_view(path)
        assert expected.pop("machine") == ENUM_E_MACHINE_NAMES[info.identity.machine], path
        assert {k: getattr(info, k) for k in expected} == expected, path
