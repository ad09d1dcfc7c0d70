"""How long describing one job may take: past its budget the description stops and the job is refused.

A user chooses what beoserv walks for their job (a --cache tree, a RUNPATH, a Python tree of their own) and
can make that slow: a directory of a million files, a file system that answers slowly. The description runs
on a thread, which Python cannot stop from outside, so it checks its budget as it goes: check() at each
file or directory it walks raises DescriptionTooSlow once the deadline of the description running on this
thread has passed; outside a description it costs nothing and never raises.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from beoboot.errors import BeobootError

DESCRIBE_SECONDS = 60.0  # the first job of a new Python tree takes a few seconds; ten times that is wrong
COMMAND_SHOWN = 200  # characters of a job's command in a message

_current = threading.local()


class DescriptionTooSlow(BeobootError):
    """A job whose files could not be described within its budget."""


def too_slow(argv: tuple[str, ...] | list[str], seconds: float) -> DescriptionTooSlow:
    command = " ".join(argv)
    if len(command) > COMMAND_SHOWN:
        command = command[:COMMAND_SHOWN] + "..."
    return DescriptionTooSlow(
        f"{command}: describing the job's files took more than {seconds:g} s, its limit",
        hint="name fewer or smaller --cache trees, or files on a faster file system",
    )


@contextlib.contextmanager
def budget(argv: tuple[str, ...] | list[str], seconds: float) -> Iterator[None]:
    """Run the block as the description of the job `argv`, for at most `seconds` (checked by check())."""
    outer = getattr(_current, "active", None)
    _current.active = (time.monotonic() + seconds, argv, seconds)
    try:
        yield
    finally:
        _current.active = outer


def check() -> None:
    """DescriptionTooSlow when the description running on this thread is past its deadline."""
    active = getattr(_current, "active", None)
    if active is not None and time.monotonic() > active[0]:
        raise too_slow(active[1], active[2])
