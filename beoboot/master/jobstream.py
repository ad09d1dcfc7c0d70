"""What the master has taken of one job's output: each byte once, in order, whatever the link resends.

A node numbers its output by offset in each stream (agent.protocol.OUTPUT_HEADER) and keeps it until
acknowledged (stage3.outputlog), so after a lost link or a beoserv restart it sends again from where the
master asks (JobResume). Chunks already taken, wholly or in part, come again then: the part taken is
dropped. A chunk beyond the next expected byte means bytes went missing on the way: they are asked for
again, once per gap (the chunks still in flight behind it are dropped until the resend fills it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STREAMS = (1, 2)  # agent.protocol.Stream.STDOUT, STDERR


@dataclass
class Taken:
    data: bytes  # the new bytes, to pass on
    end: int  # the stream's offset after them
    ask_from: bool = False  # a gap: ask the node to send again from the cursor's offsets (JobResume)


@dataclass
class StreamCursor:
    next: dict[int, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    asked: dict[int, int] = field(default_factory=dict)  # stream -> the offset a resend was asked from

    @classmethod
    def at(cls, stdout: int, stderr: int) -> StreamCursor:
        return cls({STREAMS[0]: stdout, STREAMS[1]: stderr})

    def offsets(self) -> tuple[int, int]:
        return self.next[STREAMS[0]], self.next[STREAMS[1]]

    def take(self, stream: int, offset: int, data: bytes) -> Taken:
        """A chunk of `stream` whose first byte is at `offset`. ValueError for a stream that is not output."""
        if stream not in self.next:
            raise ValueError(f"output stream {stream}: only 1 (stdout) and 2 (stderr) carry output")
        expected = self.next[stream]
        if offset > expected:
            ask = self.asked.get(stream) != expected
            self.asked[stream] = expected
            return Taken(b"", expected, ask_from=ask)
        end = offset + len(data)
        if end <= expected:
            return Taken(b"", expected)  # all of it taken before: a resend
        self.next[stream] = end
        self.asked.pop(stream, None)
        return Taken(data[expected - offset :], end)
