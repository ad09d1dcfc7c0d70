"""on_node_up and on_node_down (beoboot.master.nodehooks): real processes, once per boot, bounded,
timed, and never in the way of the event loop."""

import asyncio
import dataclasses
import logging
import sys
import time

import pytest

from beoboot.master.config import MasterConfig
from beoboot.master.nodehooks import NodeHooks

WRITE_NODE = [sys.executable, "-c", "import os, sys; print('hook', os.environ['BEOBOOT_NODE'], sys.argv[1:])"]


@pytest.fixture(autouse=True)
def caplog(caplog):
    """beoserv's logger as the tests read it, whether or not a beoserv in this process set it apart."""
    logger = logging.getLogger("beoserv")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


def hooks_with(**settings):
    config = dataclasses.replace(MasterConfig(), **settings)
    return NodeHooks(lambda: config)


async def settle(hooks):
    while hooks.tasks:
        await asyncio.gather(*hooks.tasks, return_exceptions=True)


def test_node_up_runs_once_per_boot_with_the_node_number(caplog):
    caplog.set_level(logging.INFO, "beoserv")
    hooks = hooks_with(on_node_up=(*WRITE_NODE, "up"), on_node_down=(*WRITE_NODE, "down"))

    async def scenario():
        hooks.registered(3, "boot-a", 1)
        hooks.node_up(3)
        hooks.node_up(3)  # stage3_ready again in the same boot
        await settle(hooks)
        hooks.registered(3, "boot-a", 2)  # registered again (the master lost it): the same kernel boot
        hooks.node_up(3)
        await settle(hooks)
        hooks.node_down(3)
        hooks.node_down(3)  # down once
        hooks.registered(3, "boot-b", 3)
        hooks.node_up(3)
        await settle(hooks)
        hooks.registered(3, "boot-c", 4)  # rebooted before anyone found it silent: down, then up
        hooks.node_up(3)
        await settle(hooks)

    asyncio.run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert said.count("on_node_up for node 3: hook 3 ['up']") == 3  # boot-a, boot-b and boot-c
    assert said.count("on_node_down for node 3: hook 3 ['down']") == 2
    assert hooks.ran == 5


def test_a_failing_or_missing_hook_is_logged(caplog):
    caplog.set_level(logging.INFO, "beoserv")

    async def scenario(argv):
        hooks = hooks_with(on_node_up=argv)
        hooks.registered(1, "b", 1)
        hooks.node_up(1)
        await settle(hooks)

    asyncio.run(scenario((sys.executable, "-c", "import sys; sys.exit(3)")))
    asyncio.run(scenario(("/nonexistent/hook",)))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(s.endswith("failed with status 3") for s in said), said
    assert any("on_node_up for node 1: cannot start /nonexistent/hook" in s for s in said), said


def test_hooks_are_bounded_timed_and_do_not_block_the_loop(caplog):
    caplog.set_level(logging.INFO, "beoserv")
    sleeper = (sys.executable, "-c", "import time; time.sleep(30)")
    hooks = hooks_with(on_node_up=sleeper, hook_timeout=0.5, hook_concurrency=2)
    ticks = []

    async def scenario():
        for number in range(4):
            hooks.registered(number, f"b{number}", 1)
            hooks.node_up(number)
        started = time.monotonic()
        while hooks.tasks:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    took = asyncio.run(scenario())
    killed = [r.getMessage() for r in caplog.records if "killed after 0.5 s" in r.getMessage()]
    assert len(killed) == 4
    assert 1.0 <= took < 5, took  # two at a time: two rounds of 0.5 s, not one, not 30 s
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.5  # the loop kept running meanwhile
