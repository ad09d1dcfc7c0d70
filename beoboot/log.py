"""Logging and step timing: every build step goes through `step()` so it is logged and timed once."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("beoboot")


def setup(quiet: bool = False, debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Log the start and the duration of a build step."""
    log.info("‣ %s", what)
    start = time.monotonic()
    try:
        yield
    finally:
        log.info("  %s: %.2fs", what, time.monotonic() - start)
