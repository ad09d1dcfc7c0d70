"""rtnetlink messages (pure), and the agent's DHCP client + netlink against a real dnsmasq, each in its own
network namespace joined by a veth pair: no packet leaves the two namespaces."""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import netlink

ROOT = Path(__file__).resolve().parent.parent


def _attrs(body: bytes) -> dict[int, bytes]:
    attrs, i = {}, 0
    while i + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, i)
        attrs[kind] = body[i + 4 : i + length]
        i += (length + 3) & ~3
    return attrs


def test_rtattr_is_padded_to_four_bytes():
    assert netlink.rtattr(1, b"\x0a\x00\x02") == b"\x07\x00\x01\x00\x0a\x00\x02\x00"
    assert netlink.rtattr(4, struct.pack("=i", 3)) == b"\x08\x00\x04\x00\x03\x00\x00\x00"


def test_link_up_message():
    msg = netlink.link_up_message(3, seq=9)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 16, 0x5, 9, 0)
    assert struct.unpack_from("=BxHiII", msg, 16) == (0, 0, 3, 1, 1)


@pytest.mark.parametrize(
    "address, prefix, broadcast",
    [("10.0.2.15", 24, "10.0.2.255"), ("192.168.7.9", 20, "192.168.15.255"), ("10.1.1.0", 31, None)],
)
def test_add_address_message(address, prefix, broadcast):
    msg = netlink.add_address_message(2, address, prefix, seq=1)
    _, kind, flags, _, _ = struct.unpack_from("=IHHII", msg)
    assert kind == 20 and flags == 0x1 | 0x4 | 0x400 | 0x100
    assert struct.unpack_from("=BBBBI", msg, 16) == (socket.AF_INET, prefix, 0, 0, 2)
    attrs = _attrs(msg[24:])
    assert attrs[netlink.IFA_LOCAL] == attrs[netlink.IFA_ADDRESS] == socket.inet_aton(address)
    assert attrs.get(netlink.IFA_BROADCAST) == (socket.inet_aton(broadcast) if broadcast else None)


@pytest.mark.parametrize("onlink, flags", [(False, 0), (True, netlink.RTNH_F_ONLINK)])
def test_default_route_message(onlink, flags):
    msg = netlink.default_route_message(5, "10.0.2.2", seq=4, onlink=onlink)
    assert struct.unpack_from("=IHHII", msg)[1] == 24
    assert struct.unpack_from("=BBBBBBBBI", msg, 16) == (socket.AF_INET, 0, 0, 0, 254, 16, 0, 1, flags)
    attrs = _attrs(msg[28:])
    assert attrs == {netlink.RTA_GATEWAY: socket.inet_aton("10.0.2.2"), netlink.RTA_OIF: struct.pack("=i", 5)}


def test_parse_acks():
    ok = struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", 0) + b"\0" * 16
    refused = struct.pack("=IHHII", 36, 2, 0, 8, 0) + struct.pack("=i", -17) + b"\0" * 16
    other = struct.pack("=IHHII", 20, 16, 0, 9, 0) + b"\0" * 4
    assert netlink.parse_acks(other + ok + refused) == [netlink.Ack(7, 0), netlink.Ack(8, 17)]
    assert netlink.parse_acks(b"\0" * 8) == []


@pytest.mark.parametrize(
    "address, prefix, gateway, onlink",
    [("10.0.2.15", 24, "10.0.2.2", False), ("10.0.2.15", 32, "10.0.2.2", True), ("10.0.2.15", 24, "10.0.3.1", True)],
)
def test_gateway_is_onlink(address, prefix, gateway, onlink):
    assert netlink.gateway_is_onlink(address, prefix, gateway) is onlink


# -- dnsmasq in a network namespace ----------------------------------------------------------------------

SERVER_IP = "10.199.0.1"
MASTER = "http://10.199.0.1:8080/"

CLIENT_SCRIPT = """
import json, sys
from dataclasses import asdict
from agent import netlink, network, nicdetect
interface, resolv = sys.argv[1], sys.argv[2]
with netlink.Netlink() as nl:
    nl.link_up("lo")
    nl.link_up(interface)
nicdetect.wait_for(lambda: nicdetect.carrier(interface), 10)
state = network.configure_interface(interface, cmdline_options={}, configured_master="http://config/",
                                    say=lambda line: print(line, file=sys.stderr), resolv_path=resolv)
print(json.dumps(asdict(state)))
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def netns_pair(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("dnsmasq"):
        pytest.skip("needs root, iproute2 and dnsmasq (python3 build.py setup installs them)")
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"bb-srv-{tag}", f"bb-cli-{tag}"
    server_if, client_if = f"bbs{tag}", f"bbc{tag}"
    created = []
    try:
        for ns in (server_ns, client_ns):
            if _ip("netns", "add", ns, check=False).returncode != 0:
                pytest.skip(f"cannot create network namespace {ns}")
            created.append(ns)
        _ip("link", "add", server_if, "netns", server_ns, "type", "veth", "peer", "name", client_if, "netns", client_ns)
        _ip("-n", server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", server_if)
        _ip("-n", server_ns, "link", "set", server_if, "up")
        _ip("-n", server_ns, "link", "set", "lo", "up")
        yield server_ns, client_ns, server_if, client_if
    finally:
        for ns in created:
            _ip("netns", "del", ns, check=False)  # takes its end of the veth pair with it


@pytest.mark.integration
def test_dhcp_lease_from_dnsmasq_is_applied(netns_pair, tmp_path):
    server_ns, client_ns, server_if, client_if = netns_pair
    leases = tmp_path / "dnsmasq.leases"
    dnsmasq = subprocess.Popen(
        [
            "ip", "netns", "exec", server_ns, "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null",
            "--user=root", f"--interface={server_if}", "--bind-interfaces", "--log-dhcp",
            "--dhcp-range=10.199.0.50,10.199.0.60,255.255.255.0,1h", f"--dhcp-option=3,{SERVER_IP}",
            f"--dhcp-option=6,{SERVER_IP}", "--dhcp-option=15,cluster.test", f"--dhcp-option=224,{MASTER}",
            f"--dhcp-leasefile={leases}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # dnsmasq binds its port within milliseconds; a DISCOVER before that is resent anyway
        assert dnsmasq.poll() is None, dnsmasq.communicate()[0]
        resolv = tmp_path / "resolv.conf"
        client = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, "-c", CLIENT_SCRIPT, client_if, str(resolv)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        state = json.loads(client.stdout)
    finally:
        dnsmasq.terminate()
        server_log = dnsmasq.communicate(timeout=10)[0]

    lease = state["lease"]
    assert lease["address"].startswith("10.199.0.") and 50 <= int(lease["address"].rsplit(".", 1)[1]) <= 60
    assert (lease["prefix_len"], lease["router"], lease["dns"]) == (24, SERVER_IP, [SERVER_IP]), server_log
    assert (lease["server_id"], lease["lease_seconds"], lease["domain"]) == (SERVER_IP, 3600, "cluster.test")
    assert lease["master_url"] == state["master_url"] == MASTER  # option 224 beats the image's config
    # dnsmasq's own record of the lease: "<expiry> <mac> <ip> <hostname> <client id>"
    client_mac = json.loads(_ip("-n", client_ns, "-j", "link", "show", client_if).stdout)[0]["address"]
    recorded = leases.read_text().split()
    assert recorded[1:3] == [client_mac, lease["address"]]
    assert recorded[4] == "01:" + client_mac  # option 61: hardware type 1, then the MAC

    addrs = json.loads(_ip("-n", client_ns, "-j", "addr", "show", "dev", client_if).stdout)
    inet = [a for a in addrs[0]["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in inet] == [
        (lease["address"], 24, "10.199.0.255")
    ]
    assert "UP" in addrs[0]["flags"]
    routes = json.loads(_ip("-n", client_ns, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"], r.get("protocol")) for r in routes] == [(SERVER_IP, client_if, "dhcp")]
    assert resolv.read_text() == (
        f"# written by beoboot from the DHCP lease on {client_if}\nsearch cluster.test\nnameserver {SERVER_IP}\n"
    )
    assert "DHCPACK" in server_log and "vendor class: beoboot" in server_log
