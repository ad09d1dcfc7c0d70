"""bpsh -s and -d (as Scyld's bpsh had them): the output of each node whole, node after node in number
order, instead of interleaved as it arrives; with -d a divider line before each node's output.

The lowest-numbered node that has not ended writes through at once, so a single node's output, or the
first one's, streams as usual; the others' output waits here until every node before theirs has ended.
The session stops reading a waiting node's link once it holds more than the session's high-water mark
(must_wait), as it does for a slow reader, so beoserv never holds a whole job's output in memory.
"""

from __future__ import annotations

from collections.abc import Iterable

Chunk = tuple[int, bytes]  # (stream, data)


class SequentialOutput:
    def __init__(self, divider: bool = False) -> None:
        self.divider = divider
        self._order: list[int] = []  # nodes not yet written out, in number order; the first one is live
        self._waiting: dict[int, list[Chunk]] = {}  # node -> its output so far, while an earlier node runs
        self._ended: set[int] = set()
        self.held = 0  # bytes waiting

    def start(self, nodes: Iterable[int]) -> list[Chunk]:
        """The session's nodes; what to write first (the first node's divider)."""
        self._order = sorted(set(nodes))
        self._waiting = {node: [] for node in self._order[1:]}
        return self._header(self._order[0]) if self._order else []

    def output(self, node: int, stream: int, data: bytes) -> list[Chunk]:
        """What to write now for output of `node`: the data itself when it is the live node, else nothing."""
        if node not in self._waiting:  # the live node, or one this session did not start (an error line)
            return [(stream, data)]
        self._waiting[node].append((stream, data))
        self.held += len(data)
        return []

    def ended(self, node: int) -> list[Chunk]:
        """`node`'s job ended: when it was the live one, the next nodes' held output, up to the next node
        still running, which is live from now on."""
        self._ended.add(node)
        written: list[Chunk] = []
        while self._order and self._order[0] in self._ended:
            self._order.pop(0)
            if self._order:
                following = self._order[0]
                held = self._waiting.pop(following, [])
                self.held -= sum(len(data) for _, data in held)
                written += self._header(following) + held
        return written

    def must_wait(self, node: int, limit: int) -> bool:
        """Whether `node` waits behind an earlier one with more than `limit` bytes held for it."""
        return node in self._waiting and sum(len(data) for _, data in self._waiting[node]) > limit

    def _header(self, node: int) -> list[Chunk]:
        return [(1, b"---- node %d ----\n" % node)] if self.divider else []
