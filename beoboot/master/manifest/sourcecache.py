"""Caches for reading a job's sources on the master (beoboot.master.manifest.imports for Python, beoboot.master.manifest.perl for
Perl, beoboot.master.manifest.describe for scripts): what each file says, kept while the file's stat key is
the same (PerFile), and what a whole search found, kept while nothing in the directories it looked in
changed (Searches). A cached job then costs one read() of the inotify descriptor, and no file is read
again. Every cache here is bounded (RecentlyUsed): beoserv runs for months, and any user can have it read
file after file.
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
    """compute(path, its stat key, *context) for each path, again only when the path's stat key changed: an
    edited file is read again. `context` is what else the value depends on (the PATH a '#!' names a
    command on), part of the key. At most `limit` entries, or `limit` of what `weigh` says a value costs:
    past it the least recently used go."""

    def __init__(
        self, compute: Callable[..., T], limit: int = MAX_FILES, weigh: Callable[[T], int] = lambda value: 1
    ) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._known: RecentlyUsed[tuple[Hashable, ...], tuple[StatKey | None, T]] = RecentlyUsed(
            limit, weigh=lambda key, known: weigh(known[1])
        )

    def __call__(self, path: str, *context: Hashable) -> T:
        key = key_of(path)
        with self._lock:
            known = self._known.get((path, *context))
        if known is not None and known[0] == key:
            return known[1]
        value = self._compute(path, key, *context)
        with self._lock:
            self._known.put((path, *context), (key, value))
        return value

    def __len__(self) -> int:
        return len(self._known)

    @property
    def weight(self) -> int:
        return self._known.weight


def read_text(path: str, key: StatKey | None, limit: int) -> str:
    """A source file's text ("" when it is gone, unreadable, no regular file or larger than `limit`)."""
    if key is None or key[2] > limit:
        return ""
    try:
        return read_regular(path, limit).decode("utf-8", "replace")
    except OSError:
        return ""


class RecentlyUsed(Generic[K, V]):
    """A dict of at most `limit` entries (or `limit` of what `weigh` says an entry costs): past it, the least
    recently used ones go, and so does one replaced, each handed to `dropped` (which closes the inotify
    watches it holds). Any user can have beoserv describe tree after tree; kept for ever, each would hold
    its files' entries and a watch per directory until fs.inotify.max_user_watches ran out for every root
    process. Not locked: its owner's lock guards it."""

    def __init__(
        self,
        limit: int,
        dropped: Callable[[V], object] = lambda value: None,
        weigh: Callable[[K, V], int] = lambda key, value: 1,
    ) -> None:
        self._limit = limit
        self._dropped = dropped
        self._weigh = weigh
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.weight = 0  # of the entries held

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        old = self._pop(key)
        if old is not None and old is not value:
            self._dropped(old)
        weight = self._weigh(key, value)
        self._entries[key] = (value, weight)
        self.weight += weight
        while self.weight > self._limit:
            _, (oldest, oldest_weight) = self._entries.popitem(last=False)
            self.weight -= oldest_weight
            self._dropped(oldest)

    def drop(self, key: K) -> None:
        old = self._pop(key)
        if old is not None:
            self._dropped(old)

    def _pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.weight -= entry[1]
        return entry[0]

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
        self._found: RecentlyUsed[Hashable, _Found] = RecentlyUsed(MAX_SEARCHES, lambda found: found.watch.close())

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
            self._found.put(key, _Found(paths, watch))  # closes the watch of the one it replaces
        return paths
