"""A built image read back by independent tools: the compressor's own decompressor cuts it into the cpio
archives the kernel reads one after another, and libarchive (which stops at the first trailer) reads each."""

from __future__ import annotations

import posixpath
import subprocess
from pathlib import Path

import libarchive

DECOMPRESSORS = {".xz": ["xz", "-dc"], ".gz": ["gzip", "-dc"], ".zst": ["zstd", "-dcq"], ".lz4": ["lz4", "-dcq"]}
TRAILER = b"TRAILER!!!\0"


def archives(image: Path) -> list[bytes]:
    """The cpio archives in an image, each cut after its trailer: the 110-byte header, the 11-byte name,
    padded to 4. Concatenated compressed parts decompress as one stream with every tool here."""
    data = subprocess.run([*DECOMPRESSORS.get(image.suffix, ["cat"]), str(image)], capture_output=True, check=True)
    raw, parts, start = data.stdout, [], 0
    while (found := raw.find(TRAILER, start)) >= 0:
        end = found + len(TRAILER)
        end += -end % 4
        parts.append(raw[start:end])
        start = end
    assert raw[start:].strip(b"\0") == b"", image
    return parts


def image_files(image: Path) -> dict[str, bytes]:
    """Every regular file in an image, by absolute path, across all its archives."""
    files: dict[str, bytes] = {}
    for part in archives(image):
        with libarchive.memory_reader(part) as archive:
            for entry in archive:
                if entry.isfile:
                    files[posixpath.normpath("/" + entry.pathname)] = b"".join(entry.get_blocks())
    return files
