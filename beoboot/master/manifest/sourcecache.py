"""Caches for reading a job's sources on the master (beoboot.master.manifest.imports for Python, beoboot.master.manifest.perl for
Perl): what each file says, kept while the file's stat key is the same, and what a whole search found,
kept while nothing in the directories it looked in changed (SourceWatch). A cached job then costs one
read() of the inotify descriptor, and no file is read again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from beoboot.master.manifest.sourcewatch import SourceWatch
from beoboot.master.objects import StatKey, key_of
from beoboot.regularfile import read_regular

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
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
    """A source file's text ("" when it is gone, unreadable, no regular file or larger than `limit`)."""
    if key is None or key[2] > limit:
        return ""
    try:
        return read_regular(path, limit).decode("utf-8", "replace")
    except OSError:
        return ""


class RecentlyUsed(Generic[K, V]):
    """A dict of at most `limit` entries: past it, the least recently used one goes, and so does one replaced,
    each handed to `dropped` (which closes the inotify watches it holds). Any user can have beoserv describe
    tree after tree; kept for ever, each would hold its files' entries and a watch per directory until
    fs.inotify.max_user_watches ran out for every root process. Not locked: its owner's lock guards it."""

    def __init__(self, limit: int, dropped: Callable[[V], object] = lambda value: None) -> None:
        self._limit = limit
        self._dropped = dropped
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        old = self._entries.pop(key, None)
        if old is not None and old is not value:
            self._dropped(old)
        self._entries[key] = value
        while len(self._entries) > self._limit:
            self._dropped(self._entries.popitem(last=False)[1])

    def drop(self, key: K) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._dropped(old)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Found:
    paths: tuple[str, ...]
    watch: SourceWatch


class Searches:
    """What a search found, per key, while its watch saw no change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._found: dict[Hashable, _Found] = {}

    def get(
        self, key: Hashable, search: Callable[[SourceWatch], Iterable[str]], *, cached_only: bool = False
    ) -> tuple[str, ...] | None:
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
