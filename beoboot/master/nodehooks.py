"""The site's commands at node-up and node-down (on_node_up, on_node_down in beoserv's config): started
as their own processes off the event loop, BEOBOOT_NODE=N in their environment, at most hook_concurrency
at once, killed at hook_timeout. Their output goes to beoserv's log; a hook that fails is logged and holds
nothing back (the node is up whatever it does).

Node-up runs once per boot of a node: the boot is the kernel's boot_id the node sent when it registered
(the master's boot count also moves when a node registers again in the same boot, after the master lost
its registry), so a stage3_ready that arrives again is no new boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from beoboot.master.config import MasterConfig
from beoboot.master.printable import printable

log = logging.getLogger("beoserv")
OUTPUT_LIMIT = 64 << 10  # bytes of a hook's output logged; the rest is read and dropped
WHEN_UP, WHEN_DOWN = "up", "down"


class NodeHooks:
    def __init__(self, config: Callable[[], MasterConfig]) -> None:
        self._config = config  # read at each run: a reload's hooks take effect at the next node
        self._boot_ids: dict[int, str] = {}  # node -> what identifies its current boot
        self._up: dict[int, str] = {}  # node -> the boot its node-up hook ran for (no node-down since)
        self._slots: asyncio.Semaphore | None = None
        self._slot_count = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.ran = 0  # hooks started since beoserv did (tests, status)

    def registered(self, number: int, boot_id: str, boot: int) -> None:
        """A registration: which boot the node is in (its kernel's boot_id, else the master's count). A
        node up in an earlier boot went down in between, even if too briefly to be found silent."""
        self._boot_ids[number] = boot_id or f"boot {boot}"
        if self._up.get(number, self._boot_ids[number]) != self._boot_ids[number]:
            self.node_down(number)

    def node_up(self, number: int) -> None:
        boot = self._boot_ids.get(number, "")
        if self._up.get(number) == boot:
            return  # this boot's hook has run
        self._up[number] = boot
        self._start(WHEN_UP, self._config().on_node_up, number)

    def node_down(self, number: int) -> None:
        if self._up.pop(number, None) is None:
            return  # never came up in this boot, or its down was run
        self._start(WHEN_DOWN, self._config().on_node_down, number)

    def _start(self, when: str, argv: tuple[str, ...], number: int) -> None:
        if not argv:
            return
        task = asyncio.get_running_loop().create_task(self._run(when, argv, number))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _semaphore(self) -> asyncio.Semaphore:
        count = self._config().hook_concurrency
        if self._slots is None or count != self._slot_count:  # a reload changed it: new hooks take the new bound
            self._slots, self._slot_count = asyncio.Semaphore(count), count
        return self._slots

    async def _run(self, when: str, argv: tuple[str, ...], number: int) -> None:
        name = f"on_node_{when} for node {number}"
        timeout = self._config().hook_timeout
        async with self._semaphore():
            self.ran += 1
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, "BEOBOOT_NODE": str(number), "BEOBOOT_EVENT": when},
                    start_new_session=True,  # its own process group: a timeout kills what it started too
                )
            except OSError as exc:
                log.error("%s: cannot start %s: %s", name, argv[0], exc.strerror or exc)
                return
            try:
                output = await asyncio.wait_for(_read_bounded(process), timeout)
                status = await process.wait()
            except TimeoutError:
                _kill_group(process)
                await process.wait()
                log.error("%s: %s killed after %g s", name, argv[0], timeout)
                return
            except asyncio.CancelledError:
                _kill_group(process)  # beoserv stops: no hook is left behind it
                raise
        for line in output.decode("utf-8", "replace").splitlines():
            log.info("%s: %s", name, printable(line)[:1000])
        if status == 0:
            log.info("%s: %s exited 0", name, argv[0])
        else:
            log.error("%s: %s failed with status %d", name, argv[0], status)

    async def close(self) -> None:
        """At beoserv's stop: hooks under way are ended, not left behind."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


async def _read_bounded(process: asyncio.subprocess.Process) -> bytes:
    """The hook's output until it closes it, the first OUTPUT_LIMIT bytes kept."""
    assert process.stdout is not None
    kept = bytearray()
    while chunk := await process.stdout.read(65536):
        kept += chunk[: max(0, OUTPUT_LIMIT - len(kept))]
    return bytes(kept)
