"""The cluster's host table (/etc/hosts lines, one per node with an address), kept line by line.

Every registration may change one node's line, and every heartbeat asks for the table's version: kept per
node, a registration costs a dictionary update however many nodes there are, and the text and its
version (CRC-32) are joined again only when asked for after a change.
"""

from __future__ import annotations

import zlib


class HostTable:
    def __init__(self, lines: dict[int, str]) -> None:
        self._lines = dict(sorted(lines.items()))  # node number -> "ADDRESS nN .N\n", in number order
        self._in_order = True
        self._joined: tuple[str, int] | None = None

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
        self._joined = None
        return True

    def text_and_version(self) -> tuple[str, int]:
        if self._joined is None:
            if not self._in_order:
                self._lines = dict(sorted(self._lines.items()))
                self._in_order = True
            text = "".join(self._lines.values())
            self._joined = (text, zlib.crc32(text.encode()))
        return self._joined

    def __len__(self) -> int:
        return len(self._lines)
