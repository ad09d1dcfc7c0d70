"""A resource beoserv ran out of (descriptors, memory, socket buffers) is a busy master, not a missing file.

An open() or accept() that fails with EMFILE says nothing about the file or the client: the same request
succeeds once a transfer ends. So it is answered 503 with a jittered Retry-After, which the agent waits
out without counting a failure, never 404 (which a node takes for a file that is not there) or 500.

Under a storm the same failure repeats thousands of times a second: it is logged once per interval with
the count since the last line (Tally), whether a handler met it or the event loop's accept() did.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("beoserv")

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
LOG_INTERVAL = 10.0  # seconds between two lines about the same exhausted resource
RETRY_AFTER = (1, 5)  # seconds a refused client is told to wait, jittered so they do not come back at once
# asyncio's words when accept() fails for want of a resource: it stops accepting for a second, then tries again
ACCEPT_FAILED = "socket.accept() out of system resource"
# ...and that retry, when it comes after the listener closed (beoserv stopping while short of descriptors),
# fails on the closed socket: nothing is lost, there is nothing more to accept
ACCEPT_RETRY = "_start_serving("


def exhausted(exc: BaseException | None) -> bool:
    """Whether `exc` says a resource of this process or host ran out (and so goes away by itself)."""
    return isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS


def retry_after(
    low: int = RETRY_AFTER[0], high: int = RETRY_AFTER[1], rand: Callable[[], float] = random.random
) -> int:
    """Whole seconds from `low` to `high` (Retry-After carries whole seconds), spread evenly."""
    return low + int(rand() * (high - low + 1))


class Tally:
    """Counts occurrences and says when to log them: the first at once, then at most one line per `interval`
    saying how many there were since the last."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.since = 0  # occurrences not yet in a log line
        self._logged: float | None = None

    def count(self) -> int | None:
        """One more; the number to log now (this one included), or None when the last line is too recent."""
        self.since += 1
        now = self.clock()
        if self._logged is not None and now - self._logged < self.interval:
            return None
        self._logged, counted, self.since = now, self.since, 0
        return counted


class LoopExceptionLog:
    """The event loop's exception handler: a failure for want of a resource (accept()'s EMFILE above all,
    which asyncio reports with a traceback at every retry) is one line per interval; anything else goes to
    asyncio's own handler as before."""

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = tally or Tally()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ValueError) and ACCEPT_RETRY in str(context.get("message")):
            log.debug("accept() retried after its listener closed: %s", exc)
            return
        if not exhausted(exc):
            loop.default_exception_handler(context)
            return
        if (counted := self.tally.count()) is not None:
            assert isinstance(exc, OSError)
            what = "no connection accepted" if context.get("message") == ACCEPT_FAILED else context.get("message")
            log.warning(
                "%s: %s (%d times since the last line); retried as descriptors free",
                what,
                exc.strerror or exc,
                counted,
            )
