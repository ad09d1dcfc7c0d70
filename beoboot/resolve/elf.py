"""Read what the dynamic loader reads from an ELF file: identity, PT_INTERP and the dynamic section.

Pure parsing: `parse_elf(read, name, size)` takes a `read(offset, size) -> bytes` callable and returns data, so
tests can feed bytes and the resolver can read only the few ranges it needs from a file.

Only the ELF header, the program headers, PT_INTERP, PT_DYNAMIC and the dynamic string table are read, and
they are decoded with `struct` rather than pyelftools' construct-based parsers: pyelftools takes about 1.5 ms
a file for the same answer, which would make resolving /usr/bin slower than running `ldd`. The tag and type
numbers come from pyelftools' enums, and tests/resolve/test_elf.py checks this parser against pyelftools' own
ELFFile on the files of this machine.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from elftools.elf.enums import ENUM_D_TAG_COMMON, ENUM_DT_FLAGS_1, ENUM_E_TYPE, ENUM_P_TYPE_BASE

from beoboot.errors import ElfError

ELF_MAGIC = b"\x7fELF"

PT_LOAD = ENUM_P_TYPE_BASE["PT_LOAD"]
PT_DYNAMIC = ENUM_P_TYPE_BASE["PT_DYNAMIC"]
PT_INTERP = ENUM_P_TYPE_BASE["PT_INTERP"]

DT_NULL = ENUM_D_TAG_COMMON["DT_NULL"]
DT_NEEDED = ENUM_D_TAG_COMMON["DT_NEEDED"]
DT_STRTAB = ENUM_D_TAG_COMMON["DT_STRTAB"]
DT_STRSZ = ENUM_D_TAG_COMMON["DT_STRSZ"]
DT_SONAME = ENUM_D_TAG_COMMON["DT_SONAME"]
DT_RPATH = ENUM_D_TAG_COMMON["DT_RPATH"]
DT_RUNPATH = ENUM_D_TAG_COMMON["DT_RUNPATH"]
DT_FLAGS_1 = ENUM_D_TAG_COMMON["DT_FLAGS_1"]
DF_1_NODEFLIB = ENUM_DT_FLAGS_1["DF_1_NODEFLIB"]

ET_EXEC = ENUM_E_TYPE["ET_EXEC"]
ET_DYN = ENUM_E_TYPE["ET_DYN"]

# How many header bytes to read first: the ELF header and, in almost every file, the program headers.
HEAD_SIZE = 4096
# What a file may make the reader read, from what the kernel and ld.so accept: a file's own numbers never
# decide alone how much is read
MAX_PHDR_TABLE = 65536  # the kernel refuses a larger program header table (load_elf_phdrs)
MAX_INTERP = 4096  # PATH_MAX: the kernel refuses a longer PT_INTERP
MAX_DYNAMIC = 1 << 20  # 65536 dynamic entries; real objects have a few dozen
MAX_STRING = 65536  # one DT_NEEDED, DT_SONAME or path list
MAX_NAMES = 1 << 20  # all of them: entries may share one offset, and a file must not multiply its bytes
SHORT_STRING = 256  # read first for a name: most are shorter
TRUNCATED_HINT = "the file is truncated, or not an ELF object"


class ElfClass(IntEnum):
    ELF32 = 1
    ELF64 = 2


@dataclass(frozen=True)
class ElfIdentity:
    """What glibc compares before it accepts a library for a program (see elf_machine_matches_host)."""

    elf_class: ElfClass
    little_endian: bool
    machine: int  # e_machine, e.g. 62 for EM_X86_64

    def describe(self) -> str:
        bits = 64 if self.elf_class is ElfClass.ELF64 else 32
        return f"ELF{bits} {'LSB' if self.little_endian else 'MSB'} machine {self.machine}"


@dataclass(frozen=True)
class ElfInfo:
    identity: ElfIdentity
    elf_type: int  # e_type: ET_EXEC, ET_DYN, ...
    interp: str | None  # PT_INTERP, e.g. "/lib64/ld-linux-x86-64.so.2"
    dynamic: bool  # has PT_DYNAMIC; False for a classic static executable
    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: tuple[str, ...] | None = None  # DT_RPATH split on ':'; None when absent
    runpath: tuple[str, ...] | None = None  # DT_RUNPATH split on ':'; None when absent
    nodeflib: bool = False  # DF_1_NODEFLIB: skip ld.so.cache and the default directories

    @property
    def statically_linked(self) -> bool:
        """What `ldd` calls "statically linked": no interpreter and nothing needed (static-pie too)."""
        return self.interp is None and not self.needed


Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class _Layout:
    """struct formats for one ELF class and byte order."""

    ehdr: struct.Struct  # e_type .. e_phnum, starting at offset 16
    phdr: struct.Struct  # p_type, p_offset, p_vaddr, p_filesz
    dyn: struct.Struct  # d_tag, d_val


def _layout(elf_class: ElfClass, little: bool) -> _Layout:
    order = "<" if little else ">"
    if elf_class is ElfClass.ELF64:
        # e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum
        return _Layout(
            struct.Struct(order + "HHIQQQIHHH"),
            # p_type p_flags p_offset p_vaddr (p_paddr) p_filesz
            struct.Struct(order + "I4xQQ8xQ"),
            struct.Struct(order + "qQ"),
        )
    return _Layout(
        struct.Struct(order + "HHIIIIIHHH"),
        # p_type p_offset p_vaddr (p_paddr) p_filesz
        struct.Struct(order + "III4xI"),
        struct.Struct(order + "iI"),
    )


_LAYOUTS = {(c, le): _layout(c, le) for c in ElfClass for le in (True, False)}


def parse_identity(head: bytes, name: str) -> tuple[ElfIdentity, int]:
    """The identity and e_type from the first bytes of a file; ElfError if it is not ELF."""
    if len(head) < 20 or head[:4] != ELF_MAGIC:
        raise ElfError(f"{name} is not an ELF file", hint="pass a dynamically linked program or library")
    try:
        elf_class = ElfClass(head[4])
    except ValueError:
        raise ElfError(f"{name}: unknown ELF class {head[4]}") from None
    if head[5] not in (1, 2):
        raise ElfError(f"{name}: unknown ELF byte order {head[5]}")
    little = head[5] == 1
    elf_type, machine = struct.unpack_from("<HH" if little else ">HH", head, 16)
    return ElfIdentity(elf_class, little, machine), elf_type


class _File:
    """The file behind a Reader, read only in ranges that lie inside it and are no larger than a limit: an
    offset or size in the file is whatever its author wrote (2**64 - 1 included), and must never decide
    alone how much is read or allocated."""

    def __init__(self, read: Reader, name: str, size: int) -> None:
        self.read, self.name, self.size = read, name, size

    def bytes(self, offset: int, length: int, what: str, limit: int) -> bytes:
        if length > limit:
            raise ElfError(f"{self.name}: {what} is {length} bytes, more than the {limit} a loader accepts")
        if offset > self.size or length > self.size - offset:
            raise ElfError(
                f"{self.name}: {what} at offset {offset} ({length} bytes) runs past the end of the "
                f"file ({self.size} bytes)",
                hint=TRUNCATED_HINT,
            )
        data = self.read(offset, length)
        if len(data) < length:
            raise ElfError(f"{self.name}: {what} could not be read: the file shrank while it was read")
        return data


def parse_elf(read: Reader, name: str, size: int) -> ElfInfo:
    """Parse what the loader needs from the file behind `read`, `size` bytes long; `name` only appears in
    error messages. Any file gives an ElfInfo or an ElfError, holding at most a few MiB of it."""
    file = _File(read, name, size)
    head = read(0, min(HEAD_SIZE, size))
    identity, elf_type = parse_identity(head, name)
    layout = _LAYOUTS[(identity.elf_class, identity.little_endian)]
    if len(head) < 16 + layout.ehdr.size:
        raise ElfError(f"{name}: truncated ELF header")
    _, _, _, _, phoff, _, _, _, phentsize, phnum = layout.ehdr.unpack_from(head, 16)
    if phnum and phentsize < layout.phdr.size:
        raise ElfError(f"{name}: program header entries of {phentsize} bytes are too small")

    table_size = phnum * phentsize
    if phoff + table_size <= len(head):
        table = head[phoff : phoff + table_size]
    else:
        table = file.bytes(phoff, table_size, "program header table", MAX_PHDR_TABLE)

    loads: list[tuple[int, int, int]] = []  # (p_vaddr, p_filesz, p_offset), to find DT_STRTAB in the file
    interp: tuple[int, int] | None = None
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        p_type, p_offset, p_vaddr, p_filesz = layout.phdr.unpack_from(table, index * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == PT_INTERP and interp is None:  # the kernel takes the first
            interp = (p_offset, p_filesz)
        elif p_type == PT_DYNAMIC:  # ld.so the last
            dynamic = (p_offset, p_filesz)

    interp_name = None if interp is None else _cstring(file.bytes(*interp, "PT_INTERP", MAX_INTERP), 0)
    if dynamic is None:
        return ElfInfo(identity, elf_type, interp_name, dynamic=False)
    return _parse_dynamic(file, identity, elf_type, interp_name, layout, dynamic, loads)


def _parse_dynamic(
    file: _File,
    identity: ElfIdentity,
    elf_type: int,
    interp: str | None,
    layout: _Layout,
    dynamic: tuple[int, int],
    loads: list[tuple[int, int, int]],
) -> ElfInfo:
    name = file.name
    data = file.bytes(*dynamic, "PT_DYNAMIC", MAX_DYNAMIC)
    needed: list[int] = []
    soname = rpath = runpath = strtab = strsz = None
    flags_1 = 0
    for tag, value in layout.dyn.iter_unpack(data[: len(data) - len(data) % layout.dyn.size]):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
        elif tag == DT_SONAME:
            soname = value
        elif tag == DT_RPATH:
            rpath = value
        elif tag == DT_RUNPATH:
            runpath = value
        elif tag == DT_FLAGS_1:
            flags_1 = value

    if strtab is None or strsz is None:
        if needed or soname is not None or rpath is not None or runpath is not None:
            raise ElfError(f"{name}: dynamic section has names but no DT_STRTAB/DT_STRSZ")
        return ElfInfo(identity, elf_type, interp, dynamic=True, nodeflib=bool(flags_1 & DF_1_NODEFLIB))

    table = _file_offset(strtab, loads, name)
    if table > file.size or strsz > file.size - table:
        raise ElfError(
            f"{name}: the dynamic string table at offset {table} (DT_STRSZ {strsz} bytes) runs past "
            f"the end of the file ({file.size} bytes)",
            hint=TRUNCATED_HINT,
        )

    strings: dict[int, str] = {}
    held = [0]  # bytes of names decoded so far

    def string(at: int) -> str:
        # one read per name, not of the whole table: a large C++ library's table is megabytes
        if at in strings:
            return strings[at]
        if at >= strsz:
            raise ElfError(f"{name}: dynamic string offset {at} is past the string table ({strsz} bytes)")
        length = min(strsz - at, SHORT_STRING)
        chunk = file.read(table + at, length)
        if b"\0" not in chunk and strsz - at > length:
            chunk = file.bytes(table + at, min(strsz - at, MAX_STRING + 1), "a dynamic string", MAX_STRING + 1)
            if b"\0" not in chunk and len(chunk) > MAX_STRING:
                raise ElfError(f"{name}: dynamic string at offset {at} is longer than {MAX_STRING} bytes")
        found = strings[at] = _cstring(chunk, 0)
        held[0] += len(found)
        if held[0] > MAX_NAMES:
            raise ElfError(f"{name}: its dynamic names add up to more than {MAX_NAMES} bytes")
        return found

    def path_list(at: int | None) -> tuple[str, ...] | None:
        return None if at is None else tuple(string(at).split(":"))

    return ElfInfo(
        identity,
        elf_type,
        interp,
        dynamic=True,
        needed=tuple(string(at) for at in needed),
        soname=None if soname is None else string(soname),
        rpath=path_list(rpath),
        runpath=path_list(runpath),
        nodeflib=bool(flags_1 & DF_1_NODEFLIB),
    )


def _file_offset(address: int, loads: list[tuple[int, int, int]], name: str) -> int:
    """Where the virtual address `address` lives in the file, through the PT_LOAD that maps it."""
    for vaddr, filesz, offset in loads:
        if vaddr <= address < vaddr + filesz:
            return address - vaddr + offset
    raise ElfError(f"{name}: DT_STRTAB address {address:#x} is in no loaded segment")


def _cstring(data: bytes, start: int) -> str:
    end = data.find(b"\0", start)
    raw = data[start:] if end < 0 else data[start:end]
    return raw.decode("utf-8", "surrogateescape")


def parse_elf_bytes(data: bytes, name: str = "<bytes>") -> ElfInfo:
    """Parse an ELF image held in memory (tests, small files)."""
    return parse_elf(lambda offset, size: data[offset : offset + size], name, len(data))
