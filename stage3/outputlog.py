"""One job's output on the node, kept until the master says its bpsh has it (agent.protocol.JobAck).

Why keep it: the link to the master can break (a switch reboots, beoserv restarts) while the job runs on.
Every chunk read from the job's pipes gets the offset of its first byte in its stream (stdout, stderr), and
stays here until acknowledged, so a new link can send again exactly what did not arrive (JobResume).

Bounded: past WINDOW unacknowledged bytes the pump stops reading the job's pipes (wait_for_room), and the
job blocks on its full pipe, as it does when its bpsh reads slowly. Output is never dropped.
"""

from __future__ import annotations

import threading
from collections import deque

WINDOW = 1 << 20  # unacknowledged bytes per job before its pipes are no longer read
STREAMS = (1, 2)  # agent.protocol.Stream.STDOUT, STDERR

Chunk = tuple[int, int, bytes]  # (stream, offset of its first byte in that stream, data)


class OutputLog:
    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._chunks: deque[Chunk] = deque()
        self.next = dict.fromkeys(STREAMS, 0)  # the offset the next byte read from each pipe gets
        self.acked = dict.fromkeys(STREAMS, 0)  # below these, the master has it: forgotten here
        self.held = 0  # bytes kept
        self._room = threading.Condition()
        self._released = False  # no one will acknowledge again (the job is forgotten): never wait

    def append(self, stream: int, data: bytes) -> int:
        """Keep a chunk just read from `stream`; returns its offset."""
        with self._room:
            offset = self.next[stream]
            self.next[stream] = offset + len(data)
            if not self._released:
                self._chunks.append((stream, offset, data))
                self.held += len(data)
            return offset

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Wait until fewer than `window` bytes are held (False if `timeout` passed first)."""
        with self._room:
            return self._room.wait_for(lambda: self.held < self.window or self._released, timeout)

    def ack(self, stdout: int, stderr: int) -> None:
        """The master has each stream up to these offsets: forget that much. An ack behind an earlier one
        (a frame reordered across links) changes nothing; one beyond what was read is taken as all read."""
        with self._room:
            for stream, upto in zip(STREAMS, (stdout, stderr), strict=True):
                self.acked[stream] = max(self.acked[stream], min(upto, self.next[stream]))
            kept: deque[Chunk] = deque()
            held = 0
            for stream, offset, data in self._chunks:
                cut = self.acked[stream] - offset
                if cut >= len(data):
                    continue
                if cut > 0:
                    stream, offset, data = stream, offset + cut, data[cut:]
                kept.append((stream, offset, data))
                held += len(data)
            self._chunks, self.held = kept, held
            self._room.notify_all()

    def since(self, stdout: int, stderr: int) -> list[Chunk]:
        """What to send again for a master that has each stream up to these offsets, in the order read.
        Asking from an offset means the master has what lies before it: that much is acknowledged."""
        self.ack(stdout, stderr)
        with self._room:
            return list(self._chunks)

    def release(self) -> None:
        """No master will take this output (the job was forgotten): drop it, and never hold the pipes."""
        with self._room:
            self._released = True
            self._chunks.clear()
            self.held = 0
            self._room.notify_all()
