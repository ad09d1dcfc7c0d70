"""The cluster's host table (/etc/hosts lines, one per node with an address), kept line by line, and the
snapshot of it that nodes are served.

Every registration may change one node's line: kept per node, that costs a dictionary update however
many nodes there are. What nodes see is a published snapshot (text, bytes and version, the CRC-32 of the
text), joined again only when beoserv publishes a batch of changes (beoboot.master.server: at most every
HOSTS_DELAY), so a storm of registrations costs one join per batch, not one per registration, and every
heartbeat reply and GET /hosts in between is answered from the same snapshot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    text: str
    body: bytes  # the text, encoded once for every node that fetches it
    version: int  # CRC-32 of the text: 0 for the empty table, which a node needs not fetch

    @property
    def etag(self) -> str:
        return f'"{self.version:08x}"'


EMPTY = Snapshot("", b"", 0)


class HostTable:
    def __init__(self, lines: dict[int, str]) -> None:
        self._lines = dict(sorted(lines.items()))  # node number -> "ADDRESS nN .N\n", in number order
        self._in_order = True
        self._changed = True  # since the last snapshot
        self.published = EMPTY
        self.builds = 0  # snapshots joined (figures, tests)
        self.publish()

    def put(self, number: int, line: str | None) -> bool:
        """Node `number`'s line (None: it has no address); True when the table changed."""
        if self._lines.get(number) == line:
            return False
        if line is None:
            del self._lines[number]
        else:
            if number not in self._lines and self._lines and number < next(reversed(self._lines)):
                self._in_order = False  # new numbers come last, in order, unless an old node gains an address
            self._lines[number] = line
        self._changed = True
        return True

    def publish(self) -> Snapshot:
        """The table as it is now, for the nodes: joined only if it changed since the last snapshot."""
        if self._changed:
            if not self._in_order:
                self._lines = dict(sorted(self._lines.items()))
                self._in_order = True
            text = "".join(self._lines.values())
            body = text.encode()
            self.published = Snapshot(text, body, zlib.crc32(body))
            self._changed = False
            self.builds += 1
        return self.published

    def __len__(self) -> int:
        return len(self._lines)
