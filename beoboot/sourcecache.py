"""Caches for reading a job's sources on the master (beoboot.jobimports for Python, beoboot.jobperl for
Perl): what each file says, kept while the file's stat key is the same, and what a whole search found,
kept while nothing in the directories it looked in changed (SourceWatch). A cached job then costs one
read() of the inotify descriptor, and no file is read again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from beoboot.master.objects import StatKey, key_of
from beoboot.sourcewatch import SourceWatch

T = TypeVar("T")
MAX_FILES = 100000  # files remembered: past this, forgotten and read again as needed, not kept forever
MAX_SEARCHES = 1024


class PerFile(Generic[T]):
    """compute(path, its stat key) for each path, again only when the path's stat key changed."""

    def __init__(self, compute: Callable[[str, StatKey | None], T]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._known: dict[str, tuple[StatKey | None, T]] = {}

    def __call__(self, path: str) -> T:
        key = key_of(path)
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == key:
            return known[1]
        value = self._compute(path, key)
        with self._lock:
            if len(self._known) > MAX_FILES:
                self._known.clear()
            self._known[path] = (key, value)
        return value


def read_text(path: str, key: StatKey | None, limit: int) -> str:
    """A source file's text ("" when it is gone, unreadable or larger than `limit`)."""
    if key is None or key[2] > limit:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class _Found:
    paths: tuple[str, ...]
    watch: SourceWatch


class Searches:
    """What a search found, per key, while its watch saw no change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[Hashable, _Found] = {}

    def get(self, key: Hashable, search: Callable[[SourceWatch], Iterable[str]], *,
            cached_only: bool = False) -> tuple[str, ...] | None:  # fmt: skip
        """The paths search(watch) finds, from cache while unchanged; `cached_only`: None unless cached.
        search() adds to the watch every directory it looks in before it looks."""
        with self._lock:
            cached = self._found.get(key)
        if cached is not None and cached.watch.unchanged():
            return cached.paths
        if cached_only:
            return None
        watch = SourceWatch()
        paths = tuple(search(watch))
        with self._lock:
            if cached is not None:
                cached.watch.close()
            if len(self._found) > MAX_SEARCHES:
                for old in self._found.values():
                    old.watch.close()
                self._found.clear()
            self._found[key] = _Found(paths, watch)
        return paths
