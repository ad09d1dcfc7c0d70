"""Small libcache objects held in memory, for the batches nodes fetch them in (agent.protocol.OBJECTS_BATCH_PATH).

A cold job's manifest names a dozen files of a few KiB (locale categories, terminfo, the time zone) and,
for python3, dozens of extension modules of under 256 KiB, beside its big libraries. Fetched one request
each, a fan-out of /bin/true to a thousand nodes was 18,000 requests, and beoserv's time went on the
requests, not the bytes. A node now asks for its small objects in batches, and the master answers from
memory: each object is read once (read_object, in a thread: the file may be on a slow file server), and
served as long as its file still has the stat key it was hashed with (ObjectStore.find checks that on
every request).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from agent import protocol as p
from beoboot.master.objects import Digest, StatKey
from beoboot.regularfile import open_regular

HELD_BYTES = 32 << 20  # held at most, least recently served dropped first


def read_object(found: Digest) -> bytes | None:
    """The bytes of `found` (an ObjectStore.find answer of at most BATCH_OBJECT_MAX bytes) from its file, or
    None when the file no longer holds them. OSError as open() raises it (EMFILE is the caller's 503)."""
    if found.size > p.BATCH_OBJECT_MAX:
        return None
    with open_regular(found.path) as f:  # a FIFO put in the file's place is refused, not waited on
        data = f.read(p.BATCH_OBJECT_MAX + 1)
    return data if hashlib.sha256(data).hexdigest() == found.sha256 else None  # else rewritten since hashed


class SmallObjects:
    """The objects read lately, at most `limit` bytes of them; used from the event loop only."""

    def __init__(self, limit: int = HELD_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self.reads = 0  # objects read from their files (misses), for tests and figures
        self._data: OrderedDict[tuple[str, StatKey], bytes] = OrderedDict()

    def cached(self, found: Digest) -> bytes | None:
        data = self._data.get((found.sha256, found.key))
        if data is not None:
            self._data.move_to_end((found.sha256, found.key))
        return data

    def keep(self, found: Digest, data: bytes) -> None:
        """What read_object gave for `found`."""
        self.reads += 1
        key = (found.sha256, found.key)
        if key in self._data:
            return
        self._data[key] = data
        self.held += len(data)
        while self.held > self.limit:
            _, dropped = self._data.popitem(last=False)
            self.held -= len(dropped)
