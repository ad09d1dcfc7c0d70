"""Two network namespaces joined by a veth pair, made by a test for itself and removed after it: a server
side and a client side, so traffic between them never leaves this machine."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass(frozen=True)
class VethPair:
    server_ns: str
    client_ns: str
    server_if: str
    client_if: str


@contextlib.contextmanager
def veth_pair(prefix: str, server_ip: str, client_ip: str | None = None, prefix_len: int = 24) -> Iterator[VethPair]:
    """Namespaces `{prefix}-srv-PID` and `{prefix}-cli-PID`, the server end at server_ip/prefix_len and the
    client's at client_ip/prefix_len (or unconfigured, for a DHCP client to configure), both up with their
    loopback. Skips the test where namespaces cannot be made."""
    tag = f"{os.getpid() % 100000}"
    pair = VethPair(f"{prefix}-srv-{tag}", f"{prefix}-cli-{tag}", f"{prefix}s{tag}", f"{prefix}c{tag}")
    created = []
    try:
        for ns in (pair.server_ns, pair.client_ns):
            if ip("netns", "add", ns, check=False).returncode != 0:
                pytest.skip(f"cannot create network namespace {ns}")
            created.append(ns)
        ip(
            "link",
            "add",
            pair.server_if,
            "netns",
            pair.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            pair.client_if,
            "netns",
            pair.client_ns,
        )
        ends = [(pair.server_ns, pair.server_if, server_ip)]
        if client_ip is not None:
            ends.append((pair.client_ns, pair.client_if, client_ip))
        for ns, interface, address in ends:
            ip("-n", ns, "addr", "add", f"{address}/{prefix_len}", "dev", interface)
            ip("-n", ns, "link", "set", interface, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in created:
            ip("netns", "del", ns, check=False)  # takes its end of the veth pair with it
