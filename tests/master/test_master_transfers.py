"""The transfer gate (beoboot.master.transfers) on a real event loop: slots, the bounded queue, round robin
across nodes, and nothing left behind by a request that gave up."""

from __future__ import annotations

import asyncio

import pytest

from beoboot.master.transfers import RETRY_AFTER_MAX, Busy, TransferGate


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 10))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_slots_up_to_the_limit_then_a_bounded_queue_then_busy():
    async def scenario():
        gate = TransferGate(2, queue_limit=2)
        first, second = await gate.admit("a"), await gate.admit("b")
        waiting = asyncio.create_task(gate.admit("c"))
        other = asyncio.create_task(gate.admit("d"))
        await settle()
        assert (gate.active, gate.waiting) == (2, 2) and gate.contended
        with pytest.raises(Busy) as refused:
            await gate.admit("e")  # the queue is full
        assert 1 <= refused.value.retry_after <= RETRY_AFTER_MAX and "retry shortly" in str(refused.value)
        first.release()
        first.release()  # a second release gives nothing back twice
        assert (await waiting).node == "c" and (gate.active, gate.waiting) == (2, 1)
        second.release()
        (await other).release()
        (await waiting).release()
        assert (gate.active, gate.waiting, gate.contended) == (0, 0, False)
        assert gate.refused == 1

    run(scenario())


def test_a_node_waits_behind_nodes_with_no_transfer_under_way():
    async def scenario():
        gate = TransferGate(2, queue_limit=100)
        busy = [await gate.admit("busy"), await gate.admit("busy")]
        again = asyncio.create_task(gate.admit("busy"))  # waits first...
        await settle()
        fresh = asyncio.create_task(gate.admit("fresh"))  # ...but this node has none under way
        await settle()
        with pytest.raises(Busy):
            await gate.admit("busy")  # one waiting request per node
        busy[0].release()
        await settle()
        assert fresh.done() and not again.done()
        busy[1].release()
        await settle()
        assert again.done()

    run(scenario())


def test_a_request_waits_at_most_max_wait_and_leaves_the_queue():
    async def scenario():
        gate = TransferGate(1, queue_limit=1, max_wait=0.05, rand=lambda: 1.0)
        held = await gate.admit("a")
        with pytest.raises(Busy, match="no transfer slot within 0.05 s") as refused:
            await gate.admit("b")
        assert refused.value.retry_after == 3  # the top of 1-3 s, the queue empty again
        assert gate.waiting == 0
        held.release()
        assert gate.active == 0

    run(scenario())


def test_a_cancelled_waiter_leaves_no_slot_taken_and_no_queue_entry():
    async def scenario():
        gate = TransferGate(1, queue_limit=1)
        held = await gate.admit("a")
        waiter = asyncio.create_task(gate.admit("b"))
        await settle()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert gate.waiting == 0
        granted_then_cancelled = asyncio.create_task(gate.admit("c"))
        await settle()
        held.release()  # grants c's request...
        granted_then_cancelled.cancel()  # ...which is cancelled before it runs again
        await asyncio.gather(granted_then_cancelled, return_exceptions=True)
        assert (gate.active, gate.waiting) == (0, 0)

    run(scenario())


def test_retry_after_grows_with_the_queue():
    async def scenario():
        gate = TransferGate(4, queue_limit=4, rand=lambda: 0.0)
        slots = [await gate.admit(str(n)) for n in range(4)]
        assert gate._busy("x").retry_after == 1
        waiters = [asyncio.create_task(gate.admit(f"w{n}")) for n in range(4)]
        await settle()
        assert gate._busy("x").retry_after == 2  # a full queue: twice as long
        for slot in slots:
            slot.release()
        for waiter in waiters:
            (await waiter).release()

    run(scenario())


def test_once_transfers_end_retry_after_is_the_nodes_turn_at_the_rate_slots_free():
    """Ten transfers ended in the last second: 10 slots a second. A node refused with 19 ahead of it (two
    waiting, 17 told to come back before it) comes back in 2 s, the next after it no sooner; once those are
    due they count no more."""

    async def scenario():
        now = [100.0]
        gate = TransferGate(2, queue_limit=2, rand=lambda: 0.5, clock=lambda: now[0])
        for n in range(10):
            now[0] = 100.0 + n / 10
            (await gate.admit(f"done{n}")).release()
        now[0] = 101.0
        slots = [await gate.admit(f"busy{n}") for n in range(2)]
        waiters = [asyncio.create_task(gate.admit(f"w{n}")) for n in range(2)]
        await settle()
        delays = [gate._busy("x").retry_after for _ in range(20)]
        assert delays[0] == 1 and delays[17] == 2 and delays == sorted(delays)  # (2 + 1) / 10 s, then (19 + 1) / 10
        now[0] = 104.0  # every one of them is due: only the waiting count again
        assert gate._busy("x").retry_after == 1
        for slot in slots:
            slot.release()
        for waiter in waiters:
            (await waiter).release()

    run(scenario())


def test_what_the_rate_is_measured_over_stays_bounded_when_no_one_is_refused():
    """A beoserv up for weeks ends millions of transfers, most with no one refused."""

    async def scenario():
        now = [0.0]
        gate = TransferGate(4, queue_limit=4, clock=lambda: now[0])
        for n in range(10_000):
            now[0] = n * 0.01
            (await gate.admit("a")).release()
        assert len(gate._ended) <= 501  # RATE_WINDOW (5 s) of them, at 100 a second

    run(scenario())


def test_a_storm_of_every_node_waits_in_line_and_none_is_refused():
    """A queue of one request per node: a hundred nodes asking at once for two slots are all served, in the
    order they asked, none told to come back."""

    async def scenario():
        gate = TransferGate(2, queue_limit=100)
        asks = [asyncio.create_task(gate.admit(f"n{n}")) for n in range(100)]
        served = []
        for ask in asks:
            slot = await ask
            served.append(slot.node)
            slot.release()
        assert served == [f"n{n}" for n in range(100)] and gate.refused == 0

    run(scenario())
