"""Describing jobs off beoserv's event loop so that no user's jobs can hold up another user's.

A job whose manifest is not cached is described on a thread (it reads and hashes files). With one shared
pool, a few descriptions that never end (a file that blocks, a file system that does not answer) would take
every thread, and every later job of every user would wait behind them. Here each description has a thread
of its own, and each user at most PER_USER descriptions at a time; a user's further jobs wait for their own
turn, holding no thread. A description that overruns its budget (beoboot.master.manifest.budget) is refused to its bpsh
at once; its thread keeps its user's slot until it has really ended, so a user cannot pile up stuck threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import protocol as p
from beoboot.master.manifest.budget import too_slow

PER_USER = 2  # descriptions of one user's jobs at a time
# beyond the budget, how long to wait for the description's own DescriptionTooSlow (it names what it was
# doing) before answering for it: a thread stuck in a system call never gets to say anything
GRACE = 5.0


@dataclass
class _User:
    slots: asyncio.Semaphore
    requests: int = 0  # waiting for a slot, or holding one (their thread still running)


@dataclass
class Describer:
    """build(request) on threads of their own, at most `per_user` at a time for each uid; a request's answer
    after at most `budget` (+ GRACE) seconds."""

    build: Callable[[p.JobRequest], p.JobManifest]
    budget: float
    per_user: int = PER_USER
    _users: dict[int, _User] = field(default_factory=dict)

    def running(self, uid: int) -> int:
        """This user's requests waiting for a slot or being described (for tests and figures)."""
        user = self._users.get(uid)
        return user.requests if user else 0

    async def describe(self, request: p.JobRequest) -> p.JobManifest:
        """The request's manifest; DescriptionTooSlow when it is not there within the budget (+ GRACE),
        waiting for a slot included: a user's job queued behind their own stuck ones is answered too."""
        try:
            return await asyncio.wait_for(self._describe(request), self.budget + GRACE)
        except TimeoutError:
            raise too_slow(request.argv, self.budget) from None

    async def _describe(self, request: p.JobRequest) -> p.JobManifest:
        user = self._users.setdefault(request.uid, _User(asyncio.Semaphore(self.per_user)))
        user.requests += 1
        try:
            await user.slots.acquire()
        except BaseException:  # gave up (bpsh went away, the budget ran out) before it held a slot
            self._leave(request.uid, user)
            raise
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[bool, object]] = loop.create_future()

        def finished(outcome: tuple[bool, object]) -> None:
            user.slots.release()  # now, not when the request gave up waiting: the thread has ended
            self._leave(request.uid, user)
            if not done.done():
                done.set_result(outcome)

        def run() -> None:
            try:
                outcome: tuple[bool, object] = (True, self.build(request))
            except BaseException as exc:  # noqa: BLE001 - handed to the request that waits
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(finished, outcome)
            except RuntimeError:  # the loop closed: beoserv is stopping
                pass

        threading.Thread(target=run, name=f"describe uid {request.uid}", daemon=True).start()
        ok, value = await asyncio.shield(done)  # cancelled: the thread runs on and frees its slot itself
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def _leave(self, uid: int, user: _User) -> None:
        user.requests -= 1
        if user.requests == 0 and self._users.get(uid) is user:
            del self._users[uid]
