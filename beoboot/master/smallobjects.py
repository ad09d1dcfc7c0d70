"""Small libcache objects held in memory, for the batches nodes fetch them in (agent.protocol.OBJECTS_BATCH_PATH).

A cold job's manifest names a dozen files of a few hundred bytes (locale categories, terminfo, the time
zone) beside its libraries. Fetched one request each, a fan-out to a thousand nodes was 18,000 requests for
/bin/true, and beoserv's time went on the requests, not the bytes. A node now asks for all its small objects
in one request, and the master answers from memory: each object is read once, and served as long as its
file still has the stat key it was hashed with (ObjectStore.find checks that on every request).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from agent import protocol as p
from beoboot.master.objects import Digest, StatKey
from beoboot.regularfile import open_regular

HELD_BYTES = 32 << 20  # held at most, least recently served dropped first


class SmallObjects:
    def __init__(self, limit: int = HELD_BYTES) -> None:
        self.limit = limit
        self.held = 0
        self.reads = 0  # files read (misses), for tests and figures
        self._data: OrderedDict[tuple[str, StatKey], bytes] = OrderedDict()

    def read(self, found: Digest) -> bytes | None:
        """The bytes of `found` (an ObjectStore.find answer of at most BATCH_OBJECT_MAX bytes), or None when
        its file no longer holds them. OSError as open() raises it (EMFILE is the caller's 503)."""
        key = (found.sha256, found.key)
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
            return data
        if found.size > p.BATCH_OBJECT_MAX:
            return None
        with open_regular(found.path) as f:  # a FIFO put in the file's place is refused, not waited on
            data = f.read(p.BATCH_OBJECT_MAX + 1)
        self.reads += 1
        if hashlib.sha256(data).hexdigest() != found.sha256:  # rewritten since it was hashed
            return None
        self._data[key] = data
        self.held += len(data)
        while self.held > self.limit:
            _, dropped = self._data.popitem(last=False)
            self.held -= len(dropped)
        return data
