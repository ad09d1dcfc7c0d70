"""Whether anything in some directories changed since they were looked at: inotify(7), so a cached job asks
with one read() of a non-blocking descriptor that finds nothing, instead of a stat() of every file.

All watches share one inotify instance. The kernel allows a user 128 instances by default
(fs.inotify.max_user_instances) but about 190,000 watched directories: one instance per tree would stop
caching after the 128th distinct --cache tree, Python package or locale, a number a busy master reaches.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading

# inotify(7): Linux's numbers, the same on every architecture
IN_CHANGES = (
    0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
)  # modify attrib close_write moved create delete *_self
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_NONBLOCK, IN_CLOEXEC = 0x01000000, 0o4000, 0o2000000
EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_libc = ctypes.CDLL(None, use_errno=True)


class SourceWatch:
    """Some directories, watched. Once anything in them changed (or the watch was closed, or inotify refused a
    directory), it stays changed: its owner builds again, with a new watch."""

    def __init__(self, hub: InotifyHub | None = None) -> None:
        self._hub = hub or HUB
        self._wds: set[int] = set()
        self.changed = not self._hub.usable()  # no inotify at all: never trusted, so always built anew

    def add(self, directory: str) -> None:
        if not self.changed and os.path.isdir(directory):
            self._hub.watch(self, directory)

    def unchanged(self) -> bool:
        if not self.changed:
            self._hub.drain()
        return not self.changed

    def close(self) -> None:
        self._hub.release(self)


class InotifyHub:
    """One inotify descriptor and which SourceWatch cares for each of its watch descriptors. inotify gives a
    directory watched twice the same descriptor, so watches that share a directory share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -2  # not opened yet (-1: inotify_init1 failed)
        self._watchers: dict[int, set[SourceWatch]] = {}

    def usable(self) -> bool:
        with self._lock:
            return self._open() >= 0

    def watch(self, watch: SourceWatch, directory: str) -> None:
        with self._lock:
            if watch.changed or self._open() < 0:
                return
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_CHANGES | IN_ONLYDIR)
            if wd < 0:
                watch.changed = True  # e.g. fs.inotify.max_user_watches reached: not watched, not trusted
                return
            self._watchers.setdefault(wd, set()).add(watch)
            watch._wds.add(wd)

    def drain(self) -> None:
        """Read every pending event and mark the watches of its directory changed."""
        with self._lock:
            while self._fd >= 0:
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    return
                except OSError as exc:
                    if exc.errno == errno.EINTR:
                        continue
                    self._mark_all()  # cannot tell what changed: everything did
                    return
                self._dispatch(data)

    def release(self, watch: SourceWatch) -> None:
        with self._lock:
            watch.changed = True
            for wd in watch._wds:
                watchers = self._watchers.get(wd)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._watchers[wd]
                        _libc.inotify_rm_watch(self._fd, wd)
            watch._wds.clear()

    def watched_directories(self) -> int:
        with self._lock:
            return len(self._watchers)

    def _open(self) -> int:
        if self._fd == -2:
            self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        return self._fd

    def _dispatch(self, data: bytes) -> None:
        offset = 0
        while offset + EVENT_HEADER.size <= len(data):
            wd, mask, _, name_length = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size + name_length
            if mask & IN_Q_OVERFLOW:
                self._mark_all()  # events were lost: any directory may have changed
                continue
            for watch in self._watchers.get(wd, ()):
                watch.changed = True
            if mask & IN_IGNORED:  # the directory is gone (or unwatched): its descriptor means nothing now
                for watch in self._watchers.pop(wd, ()):
                    watch._wds.discard(wd)

    def _mark_all(self) -> None:
        for watchers in self._watchers.values():
            for watch in watchers:
                watch.changed = True


HUB = InotifyHub()
