"""Requests and bytes per second over the last WINDOW seconds, for SIGUSR1's dump and GET /status.

beoserv counts requests and the bytes of its answers as they go (running totals); a sample of the totals
is kept every second or so, and a rate is the difference between now and the oldest sample within the
window, so it says what the last ten seconds were, not the average since start.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW = 10.0  # seconds the rates are taken over
SAMPLE_EVERY = 1.0  # seconds between samples (beoserv's sampler task)


class Rates:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.requests = 0
        self.bytes = 0
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, requests, bytes), oldest first
        self.sample()

    def answered(self, nbytes: int) -> None:
        self.bytes += nbytes

    def sample(self) -> None:
        now = self.clock()
        self._samples.append((now, self.requests, self.bytes))
        # the newest sample at least WINDOW old is the base: older ones go
        while len(self._samples) > 1 and now - self._samples[1][0] >= WINDOW:
            self._samples.popleft()

    def per_second(self) -> tuple[float, float]:
        """(requests, bytes) per second since the base sample: over the last WINDOW seconds once beoserv
        has run that long."""
        now = self.clock()
        since, requests, nbytes = self._samples[0]
        span = now - since
        if span <= 0:
            return 0.0, 0.0
        return (self.requests - requests) / span, (self.bytes - nbytes) / span
