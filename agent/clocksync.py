"""The node's clock, set from the master's: at registration, and again whenever it drifts too far.

A diskless node has only its RTC, which may be years off (a flat CMOS battery, a board never set). Every
registration and heartbeat reply carries the master's wall time as it answered (`master_time`); the node
timed the exchange on its monotonic clock, so it knows the round trip, and takes the master's time to be
`master_time + rtt / 2` at the moment the reply came back: right to within half the round trip, whatever
the network's delay, as long as the two directions take about as long.

Pure arithmetic (`measure`) is apart from the one system call (`set_wall_clock`), so that it can be tested
on a build host; a simulated node measures and reports, and never sets the host's clock.

Standard library only; never imports beoboot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_DRIFT = 0.5  # seconds; the master's config (max_clock_drift) says its own in RegisterReply


@dataclass(frozen=True)
class Measurement:
    offset: float  # seconds to add to the node's wall clock to read the master's
    round_trip: float  # seconds, on the node's monotonic clock


def measure(master_time: float, sent_mono: float, received_mono: float, received_wall: float) -> Measurement | None:
    """The offset of the master's clock from ours, from one request timed on our monotonic clock
    (sent_mono .. received_mono) whose reply said the master's wall time was `master_time`; our wall clock
    read `received_wall` when the reply came. None when the reply carries no time (an older master: 0) or
    the figures cannot be right (a round trip that ran backwards, a time that is not finite)."""
    round_trip = received_mono - sent_mono
    if not (master_time > 0 and math.isfinite(master_time) and math.isfinite(received_wall)):
        return None
    if not (math.isfinite(round_trip) and round_trip >= 0):
        return None
    return Measurement(master_time + round_trip / 2 - received_wall, round_trip)


def set_wall_clock(offset: float) -> None:
    """Step CLOCK_REALTIME by `offset` seconds (root only). Stepped, not slewed: a clock years off would take
    centuries to slew, and nothing on a node that has just booted depends on its wall clock running smoothly
    (timeouts and the protocol's times are monotonic)."""
    time.clock_settime(time.CLOCK_REALTIME, time.time() + offset)


class ClockKeeper:
    """Measures the offset at each reply that carries the master's time, and sets the clock at the first
    (registration) and whenever |offset| passes `max_drift`. `setter` None: measure only (a simulated node,
    a dry run, a test). What it measured and what it set are kept for the next heartbeat to report."""

    def __init__(
        self,
        setter: Callable[[float], None] | None = None,
        *,
        max_drift: float = DEFAULT_MAX_DRIFT,
        wall: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.setter = setter
        self.max_drift = max_drift
        self.wall = wall
        self.log = log
        self.offset: float | None = None  # the last offset measured, before any step it caused
        self.residual: float | None = None  # the offset left after that step (the same when none was taken)
        self.steps = 0  # clock settings made

    def observe(self, master_time: float, sent_mono: float, received_mono: float, *, first: bool = False) -> None:
        """One reply, timed: measure, and step the clock on the first one (`first`: a registration) or when
        it is off by more than max_drift."""
        seen = measure(master_time, sent_mono, received_mono, self.wall())
        if seen is None:
            return
        self.offset = self.residual = seen.offset
        if self.setter is None or not (first or abs(seen.offset) > self.max_drift):
            return
        try:
            self.setter(seen.offset)
        except OSError as exc:  # not root, or a kernel that refuses the time
            if self.log is not None:
                self.log(f"beoboot: cannot set the clock {seen.offset:+.3f} s to the master's: {exc}")
            return
        self.steps += 1
        self.residual = 0.0
        if self.log is not None and abs(seen.offset) > self.max_drift:
            self.log(
                f"beoboot: clock set to the master's: it was {seen.offset:+.3f} s off "
                f"(round trip {seen.round_trip * 1000:.1f} ms)"
            )
