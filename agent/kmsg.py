"""The kernel's log (/dev/kmsg), shipped to the master with the agent's own lines: OOM kills, driver
errors and firmware complaints reach the master as they happen, not only the node's console.

Each read(2) of /dev/kmsg returns one record, "PRIORITY,SEQUENCE,MICROSECONDS,FLAGS[,...];MESSAGE\\n",
then optional " KEY=value" lines (Documentation/ABI/testing/dev-kmsg); non-printable bytes come escaped
as \\xNN. Opened non-blocking, a read with nothing new fails with EAGAIN; one whose next record was
overwritten (the ring buffer is small and a storm fills it) fails with EPIPE, and the next read goes on
from the oldest record still there. The sequence numbers then jump: the gap is how many were lost.

Stage 2 ships from the kernel's first record on; it hands the last sequence number it took to stage 3
(agent.handoff), which runs on the same kernel after switch_root and skips what stage 2 sent. A storm is
cut to a rate (a token bucket): what is over it is counted and said in one line, never queued, so a kernel
that logs in a loop cannot flood the master.

Parsing (bytes in, a record out) is apart from reading; standard library only, never imports beoboot.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

KMSG_PATH = "/dev/kmsg"
RECORD_MAX = 8192  # bytes of one read: the kernel's record limit (CONSOLE_EXT_LOG_MAX) is 8 KiB
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")  # syslog's, by number
NUMBER_DIGITS = 20  # a u64 has 20 digits at most
RATE = 50.0  # records a second, on average, once the burst is spent
BURST = 1000  # records at once: a whole boot's kernel log (some 300 to 800 lines) goes in one go
POLL_MS = 250  # how often the shipper looks whether it was told to stop


class KmsgError(ValueError):
    """A /dev/kmsg record that does not have the kernel's shape."""


@dataclass(frozen=True)
class KmsgRecord:
    level: int  # 0 (emerg) .. 7 (debug)
    facility: int  # 0: the kernel's own; 1 (user) and others: written into /dev/kmsg by a process
    seq: int
    usec: int  # microseconds since the kernel booted, when it was logged
    message: str

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    @property
    def seconds(self) -> float:
        return self.usec / 1e6


def _number(field: bytes, what: str, record: bytes) -> int:
    if not (0 < len(field) <= NUMBER_DIGITS and field.isdigit()):  # bytes.isdigit: ASCII digits only
        raise KmsgError(f"/dev/kmsg record {record[:80]!r}: {what} {field[:40]!r} is not a number")
    return int(field)


def parse_record(data: bytes) -> KmsgRecord:
    """One record as read(2) returned it, or KmsgError."""
    head, semicolon, rest = data.partition(b";")
    if not semicolon:
        raise KmsgError(f"/dev/kmsg record {data[:80]!r}: no ';' after its prefix")
    fields = head.split(b",")
    if len(fields) < 4:
        raise KmsgError(f"/dev/kmsg record {data[:80]!r}: {len(fields)} prefix fields, at least 4 expected")
    priority = _number(fields[0], "priority", data)
    seq = _number(fields[1], "sequence number", data)
    usec = _number(fields[2], "time stamp", data)
    message = rest.split(b"\n", 1)[0]  # the " KEY=value" dictionary lines after it are not shipped
    return KmsgRecord(priority & 7, priority >> 3, seq, usec, message.decode("utf-8", "replace"))


class KmsgReader:
    """/dev/kmsg (`fd`, opened non-blocking: open()), from the start of the ring buffer or after sequence
    number `after_seq`."""

    def __init__(self, fd: int, after_seq: int | None = None) -> None:
        self.fd = fd
        self.last_seq = after_seq  # the last record taken (read, or skipped as already sent)
        self.lost = 0  # records overwritten before they were read
        self.malformed = 0

    @classmethod
    def open(cls, path: str = KMSG_PATH, after_seq: int | None = None) -> KmsgReader:
        return cls(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), after_seq)

    def read_available(self) -> list[KmsgRecord]:
        """Every record there is now and not taken yet."""
        records = []
        while True:
            try:
                data = os.read(self.fd, RECORD_MAX)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten: the next read gives the oldest left
                    continue
                raise
            if not data:
                break
            try:
                record = parse_record(data)
            except KmsgError:
                self.malformed += 1
                continue
            if self.last_seq is not None:
                if record.seq <= self.last_seq:
                    continue  # sent by stage 2 before switch_root
                self.lost += record.seq - self.last_seq - 1
            self.last_seq = record.seq
            records.append(record)
        return records

    def close(self) -> None:
        os.close(self.fd)


class TokenBucket:
    """At most `burst` at once, refilled at `rate` a second."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# (level name, message, kernel time in seconds): how a record is queued for the master
Emit = Callable[[str, str, float], None]


class KmsgShipper:
    """Reads /dev/kmsg in a thread of its own and hands each record to `emit`, within the rate; says in one
    line (through `say`) how many were cut or lost since the last such line."""

    def __init__(
        self, reader: KmsgReader, emit: Emit, say: Callable[[str], None], bucket: TokenBucket | None = None
    ) -> None:
        self.reader, self.emit, self.say = reader, emit, say
        self.bucket = bucket or TokenBucket(RATE, BURST)
        self.cut = 0  # over the rate, not sent
        self._told_lost = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pump(self) -> int:
        """Ship what there is now; how many records were shipped."""
        shipped = 0
        for record in self.reader.read_available():
            if self.bucket.take():
                self.emit(record.level_name, record.message, record.seconds)
                shipped += 1
            else:
                self.cut += 1
        lost = self.reader.lost - self._told_lost
        if self.cut or lost:
            self.say(
                f"beoboot: kernel log: {self.cut} records not sent (more than {self.bucket.rate:.0f} a second), "
                f"{lost} overwritten before they were read"
            )
            self.cut, self._told_lost = 0, self.reader.lost
        return shipped

    def start(self) -> KmsgShipper:
        self._thread = threading.Thread(target=self._run, name="kmsg", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.reader.fd, select.POLLIN)
        while not self._stop.is_set():
            poller.poll(POLL_MS)
            self.pump()

    def stop(self) -> int | None:
        """Stop the thread, ship what is left, close; the sequence number of the last record taken."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.pump()
        self.reader.close()
        return self.reader.last_seq


def ship(
    queue: Callable[..., None],
    say: Callable[[str], None],
    *,
    after_seq: int | None = None,
    path: str = KMSG_PATH,
    reader: KmsgReader | None = None,
) -> KmsgShipper | None:
    """Start shipping the kernel's log through `queue` (agent.masterlink.MasterLink.queue_log), or None,
    said, when /dev/kmsg cannot be read (a kernel without CONFIG_PRINTK)."""
    try:
        reader = reader or KmsgReader.open(path, after_seq)
    except OSError as exc:
        say(f"beoboot: kernel log not shipped: cannot open {path}: {exc}")
        return None

    def emit(level: str, message: str, seconds: float) -> None:
        queue(level, message, source="kernel", kernel_time=seconds)

    return KmsgShipper(reader, emit, say).start()
