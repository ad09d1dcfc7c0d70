"""Compressors for initramfs images, limited to what the Linux initramfs decompressors accept.

The kernel unpacks an initramfs with its own decoders (lib/decompress_*.c), which are narrower than the
userspace tools:
- xz: the in-kernel xz_dec verifies only CRC32 (or no) checks, so the stream must be `--check=crc32` with a
  plain LZMA2 filter (Documentation/staging/xz.rst).
- lz4: only the LEGACY frame (`lz4 -l`, magic 0x184C2102) is understood, not the modern LZ4 frame.
- zstd: the streaming decoder allocates a window of the frame's window size; levels up to 19 keep the
  window at <= 8 MiB (windowLog 23), which is what the kernel's own `cmd_zstd` (-19) uses for initramfs.
- gzip: any deflate stream; we write mtime 0 and no file name so the bytes depend only on the input.

Every compressor here is deterministic: identical input gives byte-identical output. zstd and lz4 run
their CLI with a scrubbed environment, because both read default levels/threads from the environment.
"""

from __future__ import annotations

import enum
import gzip
import lzma
import os
import shutil
import subprocess

from beoboot.errors import ConfigError, ImageError, ToolError


class Compression(enum.StrEnum):
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"
    NONE = "none"


# (lowest, highest, default). Defaults favour build speed where a higher level buys little. Measured on
# a 30.0 MB cpio of real files (172 ELF libraries/programs), one core, compress time / size:
#   gzip 6: 1.0 s 38.5%   gzip 9: 3.9 s 38.2%
#   xz 6:  15.6 s 26.2%   xz 9:  22.4 s 25.5%
#   zstd 3: 0.2 s 35.8%   zstd 10: 1.1 s 32.2%   zstd 15: 6.7 s 32.0%   zstd 19: 15.4 s 28.7%
#   lz4 1:  0.1 s 53.8%   lz4 9:   0.9 s 44.6%   lz4 12:  2.9 s 44.5%
# All decompress in <= 0.5 s. Pick zstd 19 or xz when network transfer time matters more than builds.
# On a stage 2 image (48.0 MiB: the agent's Python, every Ethernet driver): CPU seconds to compress, size,
# CPU seconds to unpack in user space, and the kernel's own unpacking under QEMU TCG (two boots):
#   xz 6:    41 s  10.02 MiB  0.96 s  6.2-7.2 s      xz 9e:  61 s   9.89 MiB
#   zstd 7: 1.4 s  12.92 MiB  0.16 s  1.7-2.3 s      zstd 19: 53 s  11.06 MiB
#   gzip 6: 2.8 s  14.51 MiB  0.35 s  2-4 s          lz4 9:  2.8 s  17.72 MiB
# xz 6 is the default of the stages the kernel unpacks: the smallest, and faster to build than zstd 19.
# It costs 0.8 s more to unpack on the node; 2.9 MiB less through PXE's TFTP (1-10 MB/s) pays most of it.
LEVELS: dict[Compression, tuple[int, int, int]] = {
    Compression.GZIP: (1, 9, 6),
    Compression.XZ: (0, 9, 6),
    Compression.ZSTD: (1, 19, 7),  # 7: half the time of 10 for 2.5% more bytes on a stage image
    Compression.LZ4: (1, 12, 9),
}

MAGIC: list[tuple[bytes, Compression]] = [
    (b"\x1f\x8b", Compression.GZIP),
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x02\x21\x4c\x18", Compression.LZ4),  # legacy frame; the modern frame (04 22 4d 18) is refused
    (b"070701", Compression.NONE),
    (b"070702", Compression.NONE),
]

# The command-line tool behind each compressor that Python's standard library lacks, and the Debian
# package that ships it.
_TOOLS: dict[Compression, tuple[str, str]] = {
    Compression.ZSTD: ("zstd", "zstd"),
    Compression.LZ4: ("lz4", "lz4"),
}

# Environment variables that silently change a CLI compressor's output (level, threads, block layout).
_OUTPUT_CHANGING_ENV = ("ZSTD_CLEVEL", "ZSTD_NBTHREADS", "LZ4_CLEVEL", "LZ4_NBWORKERS", "XZ_OPT", "XZ_DEFAULTS")


def check_level(kind: Compression, level: int | None) -> int | None:
    """The level to use for `kind`: `level` if allowed, else the default; None for NONE."""
    if kind == Compression.NONE:
        return None
    lowest, highest, default = LEVELS[kind]
    if level is None:
        return default
    if not lowest <= level <= highest:
        why = " (higher zstd levels need a window the kernel's initramfs decoder refuses)" if kind == "zstd" else ""
        raise ConfigError(
            f"compression level {level} is out of range for {kind}{why}",
            hint=f"use a level from {lowest} to {highest}, or leave it unset for {default}",
        )
    return level


def compress(data: bytes, kind: Compression | str, level: int | None = None) -> bytes:
    """Compress `data` into a single stream that the kernel's initramfs decoder for `kind` accepts."""
    kind = Compression(kind)
    level = check_level(kind, level)
    if kind == Compression.NONE:
        return data
    if kind == Compression.GZIP:
        assert level is not None
        return gzip.compress(data, compresslevel=level, mtime=0)
    if kind == Compression.XZ:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": level}]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if kind == Compression.ZSTD:
        # -T1 pins the (deterministic) one-worker mode whatever the CLI's build default is.
        return _run_tool(kind, ["zstd", f"-{level}", "-T1", "-q", "-c"], data)
    if kind == Compression.LZ4:
        return _run_tool(kind, ["lz4", "-l", f"-{level}", "-q", "-c"], data)
    raise AssertionError(f"unhandled compression {kind}")


def detect(data: bytes) -> Compression:
    """The compression of an image, from its first bytes."""
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    if data.startswith(b"\x04\x22\x4d\x18"):
        raise ImageError(
            "image is in the modern LZ4 frame format, which the kernel cannot unpack as an initramfs",
            hint="recompress it with `lz4 -l` (legacy format)",
        )
    raise ImageError(
        f"image starts with {data[:6].hex()}, which is not cpio nor gzip/xz/zstd/lz4-compressed cpio",
        hint="pass an initramfs image written by beoboot (or any newc cpio)",
    )


def decompress(data: bytes) -> bytes:
    """Undo `compress`, whichever compressor it used (found by magic)."""
    kind = detect(data)
    try:
        if kind == Compression.NONE:
            return data
        if kind == Compression.GZIP:
            return gzip.decompress(data)
        if kind == Compression.XZ:
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise ImageError(f"corrupt {kind} stream: {e}", hint="rebuild the image") from e
    if kind == Compression.ZSTD:
        return _run_tool(kind, ["zstd", "-d", "-q", "-c"], data)
    return _run_tool(kind, ["lz4", "-d", "-q", "-c"], data)


def _run_tool(kind: Compression, argv: list[str], data: bytes) -> bytes:
    program, package = _TOOLS[kind]
    if shutil.which(program) is None:
        raise ToolError(f"{program} not found on PATH (needed for {kind} images)", hint=f"apt-get install {package}")
    env = {k: v for k, v in os.environ.items() if k not in _OUTPUT_CHANGING_ENV}
    proc = subprocess.run(argv, input=data, capture_output=True, env=env, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise ToolError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}: {stderr}")
    return proc.stdout
