"""Admission of the big transfers (boot images and kernels, libcache objects): at most `limit` at once.

A thousand nodes booting, or fetching a cold job's libraries with eight workers each, ask for far more
transfers than a master has descriptors for, and a few transfers already fill any link. So each transfer
takes a slot; a request finding none waits for one (at most MAX_WAIT; one request per node, so a storm of
every node waits in line as it would at a web server, each on the connection its node is budgeted) or is
told to come back (Busy: 503 with a jittered Retry-After, which nodes wait out without counting a failure).
Once transfers have ended, Retry-After is when the node's turn should come: the requests ahead of it
(waiting, and told to come back before it) over the rate slots are freed at, so a storm's refused nodes come
back spread out as slots free, not all after the same guess. A freed slot goes to the waiting node with the
fewest transfers under way, oldest first: a node that has one waits behind nodes that have none, so eight
workers on one node cannot starve another's single download.

A file that fits a socket's send buffer (SMALL_FILE) is sent at once and takes no slot, nor do the JSON
answers (registration, heartbeats, manifests), nor what is not `gated` (the build's manifest.json, which every
node reads before anything else).
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from beoboot.master.filesend import FileSend, open_to_send

SMALL_FILE = 64 << 10  # bytes: sent in one go, so its descriptor is held for no time
# seconds a request waits for a slot before it is told to retry: well within the agent's wait for the
# first byte (agent.download.TIMEOUT, 20 s), so a waiting node never takes the wait for a dead master
MAX_WAIT = 10.0
RETRY_AFTER = (1.0, 3.0)  # seconds, jittered, then scaled by how full the queue is
RETRY_AFTER_MAX = 60  # what agent.download waits at most
RATE_WINDOW = 5.0  # seconds of ended transfers the rate slots are freed at is measured over
RATE_SAMPLES = 8  # ended transfers needed before that rate is trusted


def node_key(number: int) -> str:
    """How a registered node is known to the gate, whichever route it asks by (its token, its MAC)."""
    return f"node {number}"


class Busy(Exception):
    """No slot for this transfer now: answered 503, Retry-After `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Slot:
    """One transfer's admission; release() once it is sent (more calls do nothing)."""

    def __init__(self, gate: TransferGate, node: str) -> None:
        self.gate = gate
        self.node = node
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.gate._released(self.node)


class TransferGate:
    def __init__(
        self,
        limit: int,
        queue_limit: int,
        max_wait: float = MAX_WAIT,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        # requests waiting at most: one per node (beoserv's max_nodes), each on a connection of its node's
        # budget (beoboot.master.fdlimit.FDS_PER_NODE)
        self.queue_limit = queue_limit
        self.max_wait = max_wait
        self.rand = rand
        self.clock = clock
        self.active = 0
        self.refused = 0  # requests told to retry, ever (figures)
        # set by beoserv from its count of open files: nodes hold more connections than their budget (a
        # libcache's workers each keep one alive), and what is left below the limit would not hold the slots
        self.crowded = False
        self._active_by_node: dict[str, int] = {}
        self._queue: dict[str, asyncio.Future[Slot]] = {}  # node -> its one waiting request, oldest first
        self._ended: deque[float] = deque()  # when transfers ended, within RATE_WINDOW
        self._due: list[float] = []  # heap: when the nodes told to come back are due

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def contended(self) -> bool:
        """Whether a transfer's connection is worth closing when it ends, rather than kept alive for the
        node's next request: others wait for a slot, or beoserv is short of descriptors (`crowded`)."""
        return self.crowded or bool(self._queue) or self.active >= self.limit

    async def admit(self, node: str) -> Slot:
        """A slot for a transfer to `node` (a node number, MAC or peer address): at once, after a wait, or
        Busy."""
        if self.active < self.limit and not self._queue:
            return self._grant(node)
        if len(self._queue) >= self.queue_limit or node in self._queue:
            raise self._busy(f"{self.active} transfers under way and {len(self._queue)} waiting")
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._queue[node] = waiter
        try:
            done, _ = await asyncio.wait({waiter}, timeout=self.max_wait)
        except asyncio.CancelledError:  # beoserv stopping
            if waiter.done():
                waiter.result().release()  # granted meanwhile: the slot goes to the next
            else:
                self._leave(node, waiter)
            raise
        if not done:
            self._leave(node, waiter)
            raise self._busy(f"no transfer slot within {self.max_wait:g} s ({self.active} under way)")
        return waiter.result()

    def _busy(self, why: str) -> Busy:
        self.refused += 1
        now = self.clock()
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
        rate = self._free_rate(now)
        if rate is None:  # nothing has ended yet: a guess, longer the fuller the queue
            fullness = 1 + len(self._queue) / self.queue_limit
            low, high = RETRY_AFTER
            seconds = (low + (high - low) * self.rand()) * fullness
            delay = min(RETRY_AFTER_MAX, math.ceil(seconds))
        else:
            ahead = len(self._queue) + len(self._due)
            seconds = (ahead + 1) / rate * (0.9 + 0.2 * self.rand())
            delay = max(1, min(RETRY_AFTER_MAX, int(seconds)))  # whole seconds, rounded down: early is cheap
        heapq.heappush(self._due, now + delay)
        return Busy(f"beoserv is sending all the files it may at once ({why}): retry shortly", delay)

    def _free_rate(self, now: float) -> float | None:
        """Slots freed per second lately, or None before RATE_SAMPLES transfers have ended."""
        self._forget_ended(now)
        if len(self._ended) < RATE_SAMPLES:
            return None
        return len(self._ended) / max(now - self._ended[0], 0.1)

    def _forget_ended(self, now: float) -> None:
        while self._ended and self._ended[0] < now - RATE_WINDOW:
            self._ended.popleft()

    def _grant(self, node: str) -> Slot:
        self.active += 1
        self._active_by_node[node] = self._active_by_node.get(node, 0) + 1
        return Slot(self, node)

    def _leave(self, node: str, waiter: asyncio.Future[Slot]) -> None:
        waiter.cancel()
        if self._queue.get(node) is waiter:
            del self._queue[node]

    def _released(self, node: str) -> None:
        self.active -= 1
        now = self.clock()
        self._ended.append(now)
        self._forget_ended(now)  # also when no one is refused: a long-running beoserv keeps only RATE_WINDOW
        left = self._active_by_node[node] - 1
        if left:
            self._active_by_node[node] = left
        else:
            del self._active_by_node[node]
        self._hand_over()

    def _hand_over(self) -> None:
        """Free slots to waiting nodes: the one with the fewest transfers under way, the earliest of those."""
        while self.active < self.limit and self._queue:
            node = min(self._queue, key=lambda waiting: self._active_by_node.get(waiting, 0))  # first of equals
            self._queue.pop(node).set_result(self._grant(node))


async def send_file(
    gate: TransferGate,
    node: str,
    path: str | os.PathLike[str],
    request: web.BaseRequest,
    same: Callable[[os.stat_result], bool] = lambda st: True,
    gated: bool = True,
) -> FileSend:
    """The response sending the file at `path` to `node`, with a slot of `gate` unless the file is small,
    only its head is asked for, or it is not `gated`. Busy when there is no slot; OSError as open() raises
    it, and ENOENT when what was opened is not what `same` expects (the file was replaced since it was
    looked up)."""
    size = os.stat(path).st_size  # no descriptor yet: only what is opened needs the slot
    slot = await gate.admit(node) if gated and size > SMALL_FILE and request.method != "HEAD" else None
    try:
        file, st = open_to_send(path)
        if not same(st):
            file.close()
            raise FileNotFoundError(errno.ENOENT, "replaced since it was looked up", str(path))
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    response = FileSend(file, st, done=lambda sent: slot.release() if slot is not None else None)
    if slot is not None and gate.contended:
        response.force_close()  # its connection's descriptor goes to the next transfer, not to keep-alive
    return response
