"""Compressed parts kept between builds (beoboot.image.partcache): read back by content, checked, bounded."""

from __future__ import annotations

import os
from pathlib import Path

from beoboot.image import archive
from beoboot.image.archive import PartCompressor, write_image
from beoboot.image.compress import Compression, decompress
from beoboot.image.filelist import FileList
from beoboot.image.partcache import PartCache, cache_dir


def counting(data: bytes):
    calls = []

    def compress() -> bytes:
        calls.append(1)
        return data

    return compress, calls


def test_a_part_is_compressed_once_across_builds_and_read_back_the_same(tmp_path):
    compress, calls = counting(b"compressed bytes")
    assert PartCache(tmp_path).compressed("k-xz-6", compress) == b"compressed bytes"
    assert PartCache(tmp_path).compressed("k-xz-6", compress) == b"compressed bytes"  # a later build
    assert len(calls) == 1


def test_a_damaged_entry_is_compressed_again_and_replaced(tmp_path):
    compress, calls = counting(b"the right bytes")
    cache = PartCache(tmp_path)
    cache.compressed("k-xz-6", compress)
    entry = tmp_path / "parts" / "k-xz-6"
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 0xFF
    entry.write_bytes(bytes(raw))
    assert cache.compressed("k-xz-6", compress) == b"the right bytes"
    assert cache.compressed("k-xz-6", compress) == b"the right bytes"
    assert len(calls) == 2  # once more for the damaged entry, then its replacement was good


def test_the_least_recently_used_parts_go_first_past_the_bound(tmp_path):
    cache = PartCache(tmp_path, max_bytes=2500)
    for n, name in enumerate(("old", "used", "new")):
        cache.compressed(name, lambda: b"x" * 1000)
        os.utime(tmp_path / "parts" / name, (1000 + n, 1000 + n))
    # "used" is read again, so it is newer than "new"; "old" and then "new" are the ones to go
    cache.compressed("used", lambda: b"never")
    cache.compressed("newest", lambda: b"y" * 1000)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["newest", "used"]


def test_a_cache_that_cannot_be_written_costs_only_the_time(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    compress, calls = counting(b"bytes")
    cache = PartCache(blocked)
    assert cache.compressed("k", compress) == b"bytes"
    assert cache.compressed("k", compress) == b"bytes"
    assert len(calls) == 2


def test_where_the_cache_is_and_how_it_is_turned_off(tmp_path):
    assert cache_dir({"BEOBOOT_CACHE_DIR": "off", "XDG_CACHE_HOME": "/x"}) is None
    assert cache_dir({"BEOBOOT_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/beoboot")
    assert cache_dir({"HOME": "/home/u"}) == Path(os.path.expanduser("~")) / ".cache" / "beoboot"


def test_an_image_written_from_kept_parts_is_the_same_bytes_without_compressing(tmp_path, monkeypatch):
    files = FileList()
    files.add_bytes("/init", b"#!/bin/sh\n" + bytes(range(256)) * 400, "test")
    files.add_bytes("/etc/site", b"site\n", "test")
    first, second = tmp_path / "a.cpio.xz", tmp_path / "b.cpio.xz"
    write_image(files, first, Compression.XZ, 0, compressor=PartCompressor(None, PartCache(tmp_path / "c")))
    calls = []
    real = archive.compress
    monkeypatch.setattr(archive, "compress", lambda *a: calls.append(a) or real(*a))
    write_image(files, second, Compression.XZ, 0, compressor=PartCompressor(None, PartCache(tmp_path / "c")))
    assert first.read_bytes() == second.read_bytes() and not calls
    assert decompress(second.read_bytes()).startswith(b"070701")
