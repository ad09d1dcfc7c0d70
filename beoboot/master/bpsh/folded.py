"""bpsh -b: identical output folded across nodes, as `clush -b` (and `dshbak -c`) print it: once every node
has ended, each distinct output once, under a header naming the nodes that gave it:

    ---------------
    n[0-2,5] (4)
    ---------------
    the output

Nodes group when their standard output and their exit status are the same (clush groups by exit code
first, then by output), and the groups come in clush's order: by exit status, then the largest group
first, then by the first node's name. As in clush, a last line without its newline counts as the line with it, a
node with no output is in no group, and standard error is not folded: its lines go out as they come, each
led by its node (as -p).

Output is held until the end, so it is bounded: at most HELD_MAX bytes, counting each distinct finished
output once (a thousand nodes printing the same megabyte hold one megabyte). Past that, bpsh stops
folding rather than hold more or stall the jobs: what is held is written out, finished groups under
their headers and unfinished nodes' lines led by their node, and the rest follows line by line (as -p).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from beoboot.master.nodeset import fold

HELD_MAX = 64 << 20
SEPARATOR = b"-" * 15  # clush's
Chunk = tuple[int, bytes]  # (stream, data)
STDOUT, STDERR = 1, 2


class FoldedOutput:
    def __init__(self, prefix: str = "n", limit: int = HELD_MAX) -> None:
        self.prefix, self.limit = prefix, limit
        self._running: dict[int, list[bytes]] = {}  # node -> its standard output so far
        self._groups: dict[tuple[int, bytes], list[int]] = {}  # (status, digest) -> nodes
        self._outputs: dict[bytes, bytes] = {}  # digest -> the output, once per distinct output
        self.held = 0
        self.folding = True  # False once past the limit: output then passes through, led by its node

    def output(self, node: int, data: bytes, lines: Callable[[int, bytes], bytes]) -> list[Chunk]:
        """Standard output of `node`: held while folding; else (and once the limit is passed) `lines`
        (the session's line prefixer) makes it whole lines led by the node."""
        if not self.folding:
            return [(STDOUT, lines(node, data))]
        self._running.setdefault(node, []).append(data)
        self.held += len(data)
        if self.held > self.limit:
            return self._give_up(lines)
        return []

    def ended(self, node: int, status: int) -> None:
        """`node`'s job ended with `status`: its output joins the group of its twins."""
        if not self.folding:
            return
        chunks = self._running.pop(node, [])
        data = b"".join(chunks)
        self.held -= len(data)
        if not data:
            return
        if not data.endswith(b"\n"):
            data += b"\n"  # clush's lines: a last line without its newline is the same line
        digest = hashlib.sha256(data).digest()
        if digest not in self._outputs:
            self._outputs[digest] = data
            self.held += len(data)
        self._groups.setdefault((status, digest), []).append(node)

    def groups(self) -> list[tuple[int, list[int], bytes]]:
        """(exit status, nodes, output) of every finished group, in clush's order: exit status, the largest
        group first, then the first node's name (as text: n10 comes before n2)."""
        order = sorted(
            self._groups.items(), key=lambda item: (item[0][0], -len(item[1]), f"{self.prefix}{min(item[1])}")
        )
        return [(status, sorted(nodes), self._outputs[digest]) for (status, digest), nodes in order]

    def render(self) -> list[Chunk]:
        """Every finished group under its header: what to write once every node ended."""
        return [(STDOUT, self._block(nodes, data)) for _, nodes, data in self.groups()]

    def _block(self, nodes: list[int], data: bytes) -> bytes:
        count = b" (%d)" % len(nodes) if len(nodes) > 1 else b""
        names = fold(nodes, self.prefix).encode()
        return SEPARATOR + b"\n" + names + count + b"\n" + SEPARATOR + b"\n" + data

    def _give_up(self, lines: Callable[[int, bytes], bytes]) -> list[Chunk]:
        self.folding = False
        said = b"bpsh: -b: more than %d MiB of output to hold; the rest is not folded\n" % (self.limit >> 20)
        written = [(STDERR, said), *self.render()]
        for node in sorted(self._running):
            written.append((STDOUT, lines(node, b"".join(self._running[node]))))
        self._running.clear()
        self._groups.clear()
        self._outputs.clear()
        self.held = 0
        return written
