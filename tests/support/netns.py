"""Two network namespaces joined by a veth pair, made by a test for itself and removed after it: a server
side and a client side, so traffic between them never leaves this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def qemu_netns_missing(tools: tuple[str, ...], install: str) -> str | None:
    """Why a test that boots QEMU nodes on taps in a namespace of its own cannot run here, or None."""
    from conftest import have_kernel  # the tests' own helper, not this module's import-time dependency

    if os.geteuid() != 0:
        return "needs root for a network namespace"
    missing = [tool for tool in ("ip", *tools) if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} ({install})"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for QEMU's tap devices"
    if not have_kernel():
        return "needs a kernel in /boot and QEMU: run `python3 build.py setup`"
    return None


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
