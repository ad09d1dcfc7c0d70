"""beoserv's listening socket, whose accept() fails for want of a descriptor once per retry, not once per
connection waiting.

When accept() fails with EMFILE, asyncio stops watching the socket and tries again a second later. But
CPython before 3.15 (gh-151615) goes on calling accept() for the rest of its batch (the backlog, 128)
after the first failure, reporting each and scheduling a retry for each: 128 tracebacks and 128 timers a
second for as long as descriptors are short, which is how a storm wrote 677,116 lines of log. Here the
first failure makes the next accept() calls of the same batch answer "nothing waiting" (BlockingIOError,
which ends asyncio's batch quietly) until asyncio's one retry.
"""

from __future__ import annotations

import errno
import socket
import time

from beoboot.master.exhaustion import exhausted

BACKLOG = 128  # connections the kernel holds for beoserv while it cannot accept them (aiohttp's default)
REST = 0.5  # seconds accept() says "nothing waiting" after a failure: less than asyncio's retry delay (1 s)


class Listener(socket.socket):
    """A listening TCP socket for aiohttp's SockSite."""

    _resting_until = 0.0

    def accept(self) -> tuple[socket.socket, object]:
        if time.monotonic() < self._resting_until:
            raise BlockingIOError(errno.EAGAIN, "accept() rests after running out of descriptors")
        try:
            return super().accept()
        except OSError as exc:
            if exhausted(exc):
                self._resting_until = time.monotonic() + REST
            raise


def listen(host: str, port: int) -> Listener:
    """A Listener bound to host:port (port 0: any free port) and listening; OSError as bind() raises it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = Listener(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted beoserv gets its port at once
        sock.bind(address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock
