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
from netns import ip, veth_pair

from agent.net import netlink

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("address, prefix", [("10.0.2.15", 24), ("10.1.1.0", 31)])
def test_delete_address_message(address, prefix):
    msg = netlink.delete_address_message(2, address, prefix, seq=3)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), 21, 0x1 | 0x4, 3)  # RTM_DELADDR; no CREATE or REPLACE
    assert struct.unpack_from("=BBBBI", msg, 16) == (socket.AF_INET, prefix, 0, 0, 2)
    packed = socket.inet_aton(address)
    assert _attrs(msg[24:]) == {netlink.IFA_LOCAL: packed, netlink.IFA_ADDRESS: packed}


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
from agent.net import netlink, network, nicdetect
interface, resolv = sys.argv[1], sys.argv[2]
with netlink.Netlink() as nl:
    nl.link_up("lo")
    nl.link_up(interface)
nicdetect.wait_for(lambda: nicdetect.carrier(interface), 10)
state = network.configure_interface(interface, cmdline_options={}, configured_master="http://config/",
                                    say=lambda line: print(line, file=sys.stderr), resolv_path=resolv)
print(json.dumps(asdict(state)))
"""


@pytest.fixture
def netns_pair(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("dnsmasq"):
        pytest.skip("needs root, iproute2 and dnsmasq (python3 build.py setup installs them)")
    with veth_pair("bb", SERVER_IP) as pair:
        yield pair.server_ns, pair.client_ns, pair.server_if, pair.client_if


def _start_dnsmasq(server_ns, server_if, tmp_path, lease_time="1h"):
    """dnsmasq in the server namespace, logging every DHCP exchange to its stdout; its lease file is returned."""
    leases = tmp_path / "dnsmasq.leases"
    dnsmasq = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server_ns,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--conf-file=/dev/null",
            "--user=root",
            f"--interface={server_if}",
            "--bind-interfaces",
            "--log-dhcp",
            f"--dhcp-range=10.199.0.50,10.199.0.60,255.255.255.0,{lease_time}",
            f"--dhcp-option=3,{SERVER_IP}",
            f"--dhcp-option=6,{SERVER_IP}",
            "--dhcp-option=15,cluster.test",
            f"--dhcp-option=224,{MASTER}",
            f"--dhcp-leasefile={leases}",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)  # dnsmasq binds its port within milliseconds; a DISCOVER before that is resent anyway
    if dnsmasq.poll() is not None:
        raise AssertionError(f"dnsmasq exited at once: {dnsmasq.communicate()[0]}")
    return dnsmasq, leases


def _in_client(client_ns, script, *args):
    """Run agent code in the client namespace, as the node would; its stdout (JSON) is the result."""
    client = subprocess.run(
        ["ip", "netns", "exec", client_ns, sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert client.returncode == 0, client.stderr
    return json.loads(client.stdout)


@pytest.mark.integration
def test_dhcp_lease_from_dnsmasq_is_applied(netns_pair, tmp_path):
    server_ns, client_ns, server_if, client_if = netns_pair
    dnsmasq, leases = _start_dnsmasq(server_ns, server_if, tmp_path)
    try:
        resolv = tmp_path / "resolv.conf"
        state = _in_client(client_ns, CLIENT_SCRIPT, client_if, resolv)
    finally:
        dnsmasq.terminate()
        server_log = dnsmasq.communicate(timeout=10)[0]

    lease = state["lease"]
    assert lease["address"].startswith("10.199.0.") and 50 <= int(lease["address"].rsplit(".", 1)[1]) <= 60
    assert (lease["prefix_len"], lease["router"], lease["dns"]) == (24, SERVER_IP, [SERVER_IP]), server_log
    assert (lease["server_id"], lease["lease_seconds"], lease["domain"]) == (SERVER_IP, 3600, "cluster.test")
    assert lease["master_url"] == state["master_url"] == MASTER  # option 224 beats the image's config
    # dnsmasq's own record of the lease: "<expiry> <mac> <ip> <hostname> <client id>"
    client_mac = json.loads(ip("-n", client_ns, "-j", "link", "show", client_if).stdout)[0]["address"]
    recorded = leases.read_text().split()
    assert recorded[1:3] == [client_mac, lease["address"]]
    assert recorded[4] == "01:" + client_mac  # option 61: hardware type 1, then the MAC

    addrs = json.loads(ip("-n", client_ns, "-j", "addr", "show", "dev", client_if).stdout)
    inet = [a for a in addrs[0]["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a.get("broadcast")) for a in inet] == [(lease["address"], 24, "10.199.0.255")]
    assert "UP" in addrs[0]["flags"]
    routes = json.loads(ip("-n", client_ns, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"], r.get("protocol")) for r in routes] == [(SERVER_IP, client_if, "dhcp")]
    assert resolv.read_text() == (
        f"# written by beoboot from the DHCP lease on {client_if}\nsearch cluster.test\nnameserver {SERVER_IP}\n"
    )
    assert "DHCPACK" in server_log and "vendor class: beoboot" in server_log


# -- keeping the lease (RFC 2131 4.4.5) against the same dnsmasq ------------------------------------------

RENEWAL_SCRIPT = """
import json, sys, time
from dataclasses import asdict
from agent.net import dhcp, nicdetect
from stage3 import leasekeeper
interface, step, state = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
lease = dhcp.Lease(**{**state["lease"], "dns": tuple(state["lease"]["dns"])})
destinations = []

class Recorded(leasekeeper.UdpTransport):  # the real socket; only notes where each REQUEST went
    def send(self, payload, destination):
        destinations.append(destination)
        super().send(payload, destination)

keeper = leasekeeper.LeaseKeeper(interface, nicdetect.mac_address(interface), lease, state["lease_obtained_at"],
                                 udp_factory=Recorded, log=lambda line, level="info": print(line, file=sys.stderr))
step_now = keeper.renew if step == "renew" else keeper.rebind
answer = step_now(until=time.monotonic() + 5)  # now, rather than at T1 or T2
assert answer is not None, f"no answer to the {step} in 5 s"
reply = answer.message.message_type.name
keeper.settle(answer)
print(json.dumps({"reply": reply, "destinations": destinations, "lease": asdict(keeper.lease),
                  "lease_obtained_at": keeper.obtained_at}))
"""


def _expiry_after(leases, earlier, timeout=3.0):
    """dnsmasq's recorded expiry (epoch seconds, first field), once it is past `earlier`."""
    deadline = time.monotonic() + timeout
    while True:
        expiry = int(leases.read_text().split()[0])
        if expiry > earlier or time.monotonic() > deadline:
            return expiry
        time.sleep(0.05)


def _dnsmasq_exchanges(log):
    """--log-dhcp lines ("dnsmasq-dhcp: <xid> ...") grouped by xid, in order: one text per exchange."""
    exchanges = {}
    for line in log.splitlines():
        prefix, _, rest = line.partition(": ")
        xid, _, text = rest.partition(" ")
        if prefix == "dnsmasq-dhcp" and xid.isdigit():
            exchanges[xid] = exchanges.get(xid, "") + text + "\n"
    return list(exchanges.values())


@pytest.mark.integration
def test_lease_is_renewed_by_unicast_and_rebound_by_broadcast(netns_pair, tmp_path):
    server_ns, client_ns, server_if, client_if = netns_pair
    dnsmasq, leases = _start_dnsmasq(server_ns, server_if, tmp_path, lease_time="2m")  # dnsmasq's shortest
    steps = {}
    try:
        state = _in_client(client_ns, CLIENT_SCRIPT, client_if, tmp_path / "resolv.conf")
        lease = state["lease"]
        assert 0 < lease["renewal_seconds"] < lease["rebinding_seconds"] < lease["lease_seconds"] == 120  # T1, T2
        assert state["lease_obtained_at"] <= time.monotonic()  # one clock for every namespace
        expiry = {"obtain": _expiry_after(leases, 0)}
        previous = "obtain"
        for step in ("renew", "rebind"):
            time.sleep(1.1)  # the lease file counts whole seconds: let one pass so the expiry can move
            steps[step] = _in_client(client_ns, RENEWAL_SCRIPT, client_if, step, json.dumps(state))
            expiry[step] = _expiry_after(leases, expiry[previous])
            state, previous = steps[step], step
    finally:
        dnsmasq.terminate()
        server_log = dnsmasq.communicate(timeout=10)[0]

    address = steps["renew"]["lease"]["address"]
    assert steps["renew"]["reply"] == steps["rebind"]["reply"] == "ACK", server_log
    assert steps["renew"]["destinations"] == [SERVER_IP]  # RENEWING: unicast to the server id
    assert steps["rebind"]["destinations"] == ["255.255.255.255"]  # REBINDING: broadcast
    assert steps["rebind"]["lease"]["address"] == address and steps["rebind"]["lease"]["lease_seconds"] == 120
    assert expiry["obtain"] < expiry["renew"] < expiry["rebind"], expiry  # each ACK extended the lease
    assert expiry["rebind"] >= time.time() + 120 - 10
    # dnsmasq's side, one exchange per xid: DISCOVER..ACK, then the renewal's and the rebinding's REQUEST/ACK
    exchanges = _dnsmasq_exchanges(server_log)
    assert len(exchanges) == 3, server_log
    assert f"DHCPDISCOVER({server_if})" in exchanges[0]
    for exchange in exchanges[1:]:
        assert f"DHCPREQUEST({server_if}) {address}" in exchange and f"DHCPACK({server_if}) {address}" in exchange
        assert "DHCPDISCOVER" not in exchange and "DHCPNAK" not in exchange
        # ciaddr set: the ACK went back unicast to it, unlike the first exchange's (RFC 2131 4.1)
        assert "broadcast response" not in exchange and "broadcast response" in exchanges[0]
    addrs = json.loads(ip("-n", client_ns, "-j", "addr", "show", "dev", client_if).stdout)
    assert [a["local"] for a in addrs[0]["addr_info"] if a["family"] == "inet"] == [address]


MOVE_SCRIPT = """
import sys
from agent.net import dhcp
from stage3 import leasekeeper
interface, new_address, new_router = sys.argv[1:4]
old = dhcp.Lease(interface, "10.199.0.50", 24, "10.199.0.1", (), "10.199.0.1", 120)
new = dhcp.Lease(interface, new_address, 24, new_router, (), "10.199.0.1", 120)
leasekeeper.move_address(interface, old, new)
print("{}")
"""


@pytest.mark.integration
@pytest.mark.parametrize(
    "new_address, new_router",
    [("10.199.0.51", SERVER_IP), ("10.199.1.51", "10.199.1.1")],  # same subnet; another one, with its own router
)
def test_moving_to_a_new_lease_keeps_the_permanent_address_and_a_route(netns_pair, new_address, new_router):
    _server_ns, client_ns, _server_if, client_if = netns_pair
    ip("-n", client_ns, "link", "set", client_if, "up")
    ip("-n", client_ns, "addr", "add", "10.199.0.50/24", "dev", client_if)  # the old lease: the primary
    ip("-n", client_ns, "addr", "add", "10.199.0.100/24", "dev", client_if)  # stage 3's permanent address
    ip("-n", client_ns, "route", "add", "default", "via", SERVER_IP, "dev", client_if)
    _in_client(client_ns, MOVE_SCRIPT, client_if, new_address, new_router)
    addrs = json.loads(ip("-n", client_ns, "-j", "addr", "show", "dev", client_if).stdout)
    assert sorted(a["local"] for a in addrs[0]["addr_info"] if a["family"] == "inet") == sorted(
        ["10.199.0.100", new_address]
    )
    routes = json.loads(ip("-n", client_ns, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [(new_router, client_if)]
