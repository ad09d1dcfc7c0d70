"""The host table under a registration storm: beoserv in-process on a real socket, hundreds of nodes
registering at once and heartbeating. The table is joined once per published batch, not once per
registration, and the nodes see a version per batch."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from agent import protocol as p
from beoboot.master.config import MasterConfig
from beoboot.master.hosttable import HostTable
from beoboot.master.server import HOSTS_DELAY, Beoserv, ServerOptions

NODES = 300


def test_a_snapshot_is_joined_only_when_published_after_a_change():
    table = HostTable({1: "10.0.0.2 n1 .1\n"})
    assert (table.builds, table.published.text) == (1, "10.0.0.2 n1 .1\n")
    table.put(0, "10.0.0.1 n0 .0\n")
    table.put(1, None)
    assert table.published.text == "10.0.0.2 n1 .1\n"  # what nodes see changes only when published
    assert table.publish().text == "10.0.0.1 n0 .0\n" and table.builds == 2
    assert table.publish() is table.published and table.builds == 2  # unchanged: not joined again
    assert not table.put(0, "10.0.0.1 n0 .0\n")
    assert HostTable({}).published.version == 0  # the empty table: nodes start there and fetch nothing


async def storm(tmp_path) -> tuple[Beoserv, float, set[int]]:
    (tmp_path / "boot").mkdir()
    options = ServerOptions(root=tmp_path / "boot", host="127.0.0.1", port=0, db=tmp_path / "nodes.db")
    server = Beoserv(options, MasterConfig())
    runner = web.AppRunner(server.make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    versions: set[int] = set()

    async def node(session: aiohttp.ClientSession, i: int) -> None:
        mac = f"52:54:00:0f:{i >> 8:02x}:{i & 255:02x}"
        message = {"mac": mac, "stage": "stage3", "address": f"10.7.{i >> 8}.{i & 255}"}
        async with session.post(url + p.REGISTER_PATH, json=message) as answer:
            token = (await answer.json())["link_token"]
        heartbeat = {"mac": mac, "stage": "stage3"}
        async with session.post(url + p.HEARTBEAT_PATH, json=heartbeat, headers={p.LINK_TOKEN_HEADER: token}) as got:
            versions.add((await got.json())["hosts_version"])

    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            await asyncio.gather(*(node(session, i) for i in range(NODES)))
        took = time.monotonic() - started
        await asyncio.sleep(HOSTS_DELAY * 2)  # the last batch is published
        assert len(server._hosts.published.text.splitlines()) == NODES
    finally:
        await runner.cleanup()
    return server, took, versions


def test_a_storm_of_registrations_joins_the_table_once_per_batch(tmp_path):
    server, took, versions = asyncio.run(storm(tmp_path))
    batches = took / HOSTS_DELAY + 2  # the one at start, and one after the storm
    assert server._hosts.builds <= batches, (server._hosts.builds, took)
    assert len(versions) <= batches  # what the nodes were told: a version per batch
    print(f"{NODES} registrations in {took:.2f} s: {server._hosts.builds} joins, {len(versions)} versions seen")
