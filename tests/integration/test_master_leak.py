"""One long-running master must not leak: 10 000 heartbeats over loopback, fd count and RSS steady."""

import time

import pytest
from master_helpers import MasterProcess

from agent.masterlink import MasterLink

NODES = 20
WARMUP = 1000
HEARTBEATS = 10_000
RSS_SLACK_KIB = 4096  # allocator noise and SQLite's page cache settling, not growth per request


@pytest.mark.integration
def test_ten_thousand_heartbeats_leak_nothing(tmp_path):
    (tmp_path / "boot").mkdir()
    server = MasterProcess(tmp_path / "boot", tmp_path / "nodes.db", tmp_path / "beoserv.log").start()
    try:
        links = [MasterLink(server.url, f"52:54:00:10:00:{i:02x}", "stage3") for i in range(NODES)]
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
