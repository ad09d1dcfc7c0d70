"""Compressed image parts kept between builds, by the content they compress, as ccache keeps objects.

Most of an image is the same from one build to the next: a site that changes its master's address or a
NIC list rebuilds a few files, and the shared parts (drivers, libraries, Python: 45 of stage 1's and 2's
48 MiB) are the same bytes. xz takes most of a build's time compressing them, so a part whose bytes
were compressed before, with the same compressor and level, is read back instead. The output is the
same bytes either way: the compressors run deterministically (compress.py).

The cache is `$BEOBOOT_CACHE_DIR`, else `$XDG_CACHE_HOME/beoboot`, else `~/.cache/beoboot`;
`BEOBOOT_CACHE_DIR=off` turns it off. It holds at most MAX_BYTES: the least recently used parts go first.
Each entry carries the SHA-256 of what it holds, so a damaged entry is recompressed, never used, and any
failure to read or write the cache only costs the compression it would have saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from beoboot.log import log

MAX_BYTES = 1 << 30  # a few dozen builds' worth of distinct parts
DIGEST = 32  # bytes of SHA-256 before the compressed data


def cache_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    """Where parts are kept, or None when the cache is off."""
    named = environ.get("BEOBOOT_CACHE_DIR")
    if named == "off":
        return None
    if named:
        return Path(named)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "beoboot"


class PartCache:
    def __init__(self, directory: Path | None, max_bytes: int = MAX_BYTES) -> None:
        self.dir = directory / "parts" if directory is not None else None
        self.max_bytes = max_bytes

    def compressed(self, key: str, compress: Callable[[], bytes]) -> bytes:
        """The compressed part named `key` (its input's digest with the compressor's settings): kept, or
        made by compress() and kept."""
        if self.dir is None:
            return compress()
        path = self.dir / key
        kept = self._read(path)
        if kept is not None:
            return kept
        data = compress()
        self._write(path, data)
        return data

    def _read(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                raw = f.read()
            os.utime(path)  # recently used: kept longer
        except OSError:
            return None
        data = raw[DIGEST:]
        if hashlib.sha256(data).digest() != raw[:DIGEST]:
            log.debug("part cache: %s is damaged; compressing again", path)
            return None
        return data

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(hashlib.sha256(data).digest())
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._trim()
        except OSError as e:  # a full disk or a read-only home: the build goes on without keeping the part
            log.debug("part cache: not kept at %s: %s", path, e)

    def _trim(self) -> None:
        """Remove the least recently used parts until what is left fits max_bytes."""
        assert self.dir is not None
        entries = []
        for entry in os.scandir(self.dir):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                os.unlink(path)
                total -= size
