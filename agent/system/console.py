"""Console output for PID 1: lines go to fd 1, or to /dev/console when the kernel left fd 1 closed.

The kernel opens /dev/console as fds 0-2 for init only if the node exists in the initramfs; without it
init starts with no stdio at all and Python sets sys.stdout to None. Writing with os.write on a raw fd
avoids any buffering, so a line is on the console before a power-off that follows it.
"""

from __future__ import annotations

import os

CONSOLE_DEVICE = "/dev/console"

_fd = 1


def stdout_is_open() -> bool:
    try:
        os.fstat(1)
    except OSError:
        return False
    return True


def attach_to_console(device: str = CONSOLE_DEVICE) -> bool:
    """Make fds 0-2 the console if fd 1 is closed. Returns True if the console was opened."""
    global _fd
    if stdout_is_open():
        return False
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
    for std in (0, 1, 2):
        if fd != std:
            os.dup2(fd, std)
    if fd > 2:
        os.close(fd)
    _fd = 1
    return True


def say(line: str) -> None:
    """Write one line to the console; never raises (PID 1 must not die of a closed console)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8", "replace")
    try:
        while data:
            written = os.write(_fd, data)
            data = data[written:]
    except OSError:
        pass
