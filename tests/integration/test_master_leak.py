"""One long-running master must not leak: 10 000 heartbeats from 1000 nodes over loopback (each on its own
kept-alive connection, as simulated or booted nodes send them), fd count and RSS steady."""

import resource
import time

import pytest
from master_helpers import MasterProcess

from agent.masterlink import MasterLink

NODES = 1000
WARMUP = 2 * NODES  # every node's connection open, and SQLite's pages settled
HEARTBEATS = 10_000
RSS_SLACK_KIB = 4096  # allocator noise and SQLite's page cache settling, not growth per request


@pytest.mark.integration
def test_ten_thousand_heartbeats_leak_nothing(tmp_path):
    # this process holds a connection per node: past a soft limit of 1024, within the hard one
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * NODES + 256:
        pytest.skip(f"needs an open-files hard limit of {2 * NODES + 256} (it is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * NODES + 256), hard))
    try:
        heartbeats_leak_nothing(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def heartbeats_leak_nothing(tmp_path):
    (tmp_path / "boot").mkdir()
    server = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    try:
        links = [MasterLink(server.url, f"52:54:00:10:{i >> 8:02x}:{i & 0xFF:02x}", "stage3") for i in range(NODES)]
        for lk in links:
            lk.register()

        def beat(count):
            for i in range(count):
                lk = links[i % NODES]
                if i % 50 == 0:  # now and then a node with a fresh connection, as after a reboot
                    lk.http.close()
                assert lk.heartbeat(float(i)) is not None

        beat(WARMUP)
        fds_before, rss_before = server.fds_and_rss()
        start = time.monotonic()
        beat(HEARTBEATS)
        elapsed = time.monotonic() - start
        for lk in links:
            lk.http.close()
        time.sleep(0.2)  # let the server see the closed connections
        fds_after, rss_after = server.fds_and_rss()
    finally:
        server.stop()
    print(
        f"\n{HEARTBEATS} heartbeats in {elapsed:.1f}s ({HEARTBEATS / elapsed:.0f}/s); "
        f"fds {fds_before} -> {fds_after}; RSS {rss_before} -> {rss_after} KiB"
    )
    assert fds_after <= fds_before + 2
    assert rss_after - rss_before <= RSS_SLACK_KIB
