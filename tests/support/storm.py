"""A boot storm from one process: many simulated nodes asking a real DHCP and TFTP server at once, as a
rack powered on together does. Run inside a network namespace (`python storm.py dhcp|tftp ...`); prints
one JSON object with what it measured.

DHCP: every node is a MAC address of its own, on one AF_PACKET socket; the messages are the agent's own
(agent.net.dhcp), and each node retransmits as a PXE ROM does (the PXE 2.1 spec's timeouts of 4, 8, 16
and 32 s: four tries, then it gives up). TFTP: every node is a UDP socket of its own reading one file (RFC 1350, with
the blksize option of RFC 2348), retransmitting its last packet after 1 s of silence, up to 5 times.
"""

from __future__ import annotations

import json
import random
import resource
import select
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.net import dhcp

PXE_TIMEOUTS = (4.0, 8.0, 16.0, 32.0)  # a PXE ROM's wait after each of its 4 tries; after the last, it gives up
TFTP_TIMEOUT, TFTP_RETRIES = 1.0, 5
TFTP_BLKSIZE = 1468  # a 1500-byte MTU less the IP, UDP and TFTP headers: what PXE ROMs ask for


@dataclass
class Node:
    mac: bytes
    xid: int
    sent: bytes = b""
    state: dhcp.MsgType = dhcp.MsgType.DISCOVER
    tries: int = 0
    deadline: float = 0.0
    address: str | None = None
    seconds: float | None = None
    retransmits: int = 0


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def node_macs(count: int, pattern: str, rng: random.Random) -> list[bytes]:
    """Locally administered unicast MACs: "sequential", as one vendor's batch of nodes has; "random", as NICs
    of many batches. dnsmasq starts looking for a free address at a hash of the MAC, and sequential MACs hash
    to runs of sequential addresses, which crowd each other in a range with little room to spare."""
    if pattern == "sequential":
        return [bytes([0x02, 0xBB, 0, 0, i >> 8 & 0xFF, i & 0xFF]) for i in range(count)]
    macs = sorted({bytes([0x02, *rng.randbytes(5)]) for _ in range(2 * count)})[:count]
    rng.shuffle(macs)
    return macs


def dhcp_storm(interface: str, count: int, spread: float, give_up: float, macs: str = "random") -> dict[str, object]:
    """`count` nodes DISCOVER within `spread` seconds, each REQUESTs the first offer; returns the addresses
    and how long the nodes took."""
    rng = random.Random(1)
    by_xid = {0x5EED0000 + i: Node(mac=mac, xid=0x5EED0000 + i) for i, mac in enumerate(node_macs(count, macs, rng))}
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(dhcp.ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: the replies of a storm, unlost here
    sock.bind((interface, dhcp.ETH_P_IP))
    start = time.monotonic()
    starts = sorted((rng.uniform(0, spread), node.xid) for node in by_xid.values())

    def send(node: Node, frame: bytes, now: float) -> None:
        node.sent = frame
        node.deadline = now + PXE_TIMEOUTS[min(node.tries, len(PXE_TIMEOUTS) - 1)]
        sock.send(frame)

    pending = list(starts)
    while time.monotonic() - start < give_up:
        now = time.monotonic()
        while pending and pending[0][0] <= now - start:
            node = by_xid[pending.pop(0)[1]]
            send(node, dhcp.encode_frame(node.mac, dhcp.build_discover(node.xid, node.mac)), now)
        for node in by_xid.values():
            if node.sent and node.address is None and now >= node.deadline:
                node.tries += 1
                if node.tries >= len(PXE_TIMEOUTS):
                    node.sent = b""  # gave up, as a PXE ROM does: "no DHCP offers received"
                    continue
                node.retransmits += 1
                send(node, node.sent, now)
        if not pending and all(n.address is not None or not n.sent for n in by_xid.values()):
            break
        ready, _, _ = select.select([sock], [], [], 0.05)
        while ready:
            handle(sock.recv(65535), by_xid, send, start)
            ready, _, _ = select.select([sock], [], [], 0)
    sock.close()
    done = [n for n in by_xid.values() if n.address is not None]
    seconds = [n.seconds for n in done if n.seconds is not None]
    return {
        "nodes": count,
        "leased": len(done),
        "distinct_addresses": len({n.address for n in done}),
        "addresses": sorted(n.address for n in done if n.address),
        "retransmits": sum(n.retransmits for n in by_xid.values()),
        "gave_up": sum(1 for n in by_xid.values() if n.address is None),
        "p50_s": percentile(seconds, 0.5),
        "p99_s": percentile(seconds, 0.99),
        "last_s": max(seconds) if seconds else None,
    }


def handle(frame: bytes, by_xid: dict[int, Node], send: Callable[[Node, bytes, float], None], start: float) -> None:
    payload = dhcp.decode_frame(frame)
    if payload is None:
        return
    try:
        msg = dhcp.decode_message(payload)
    except dhcp.DhcpError:
        return
    node = by_xid.get(msg.xid)
    if node is None or node.address is not None or msg.op != dhcp.BOOTREPLY:
        return
    now = time.monotonic()
    if msg.message_type == dhcp.MsgType.OFFER and node.state == dhcp.MsgType.DISCOVER:
        node.state, node.tries = dhcp.MsgType.REQUEST, 0
        send(node, dhcp.encode_frame(node.mac, dhcp.build_request(node.xid, node.mac, msg)), now)
    elif msg.message_type == dhcp.MsgType.ACK and node.state == dhcp.MsgType.REQUEST:
        node.address, node.seconds = msg.yiaddr, now - start
    elif msg.message_type == dhcp.MsgType.NAK:
        node.state, node.tries = dhcp.MsgType.DISCOVER, 0
        send(node, dhcp.encode_frame(node.mac, dhcp.build_discover(node.xid, node.mac)), now)


@dataclass
class Transfer:
    sock: socket.socket
    expected_block: int = 1
    blksize: int = 512  # RFC 1350's, until the server's OACK takes ours
    data: bytearray = field(default_factory=bytearray)
    last_sent: bytes = b""
    last_at: float = 0.0
    retries: int = 0  # in a row, since the server last answered
    retransmits: int = 0
    server: tuple[str, int] | None = None
    started: float = 0.0  # when the client sent its request; what follows counts from there
    first_byte_s: float | None = None
    done_s: float | None = None
    error: str | None = None


def tftp_storm(server: str, filename: str, count: int, spread: float, give_up: float) -> dict[str, object]:
    """`count` clients each start reading `filename` from `server` within `spread` seconds; returns how long
    they took."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 64)), hard))
    selector = selectors.DefaultSelector()
    request = (
        struct.pack("!H", 1) + b"\0".join([filename.encode(), b"octet", b"blksize", str(TFTP_BLKSIZE).encode()]) + b"\0"
    )
    transfers = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        transfers.append(Transfer(sock, last_sent=request))
    rng = random.Random(1)
    pending = sorted((rng.uniform(0, spread), i) for i in range(count))
    start = time.monotonic()
    active = count
    while active and time.monotonic() - start < give_up:
        while pending and pending[0][0] <= time.monotonic() - start:
            transfer = transfers[pending.pop(0)[1]]
            transfer.sock.sendto(request, (server, 69))
            transfer.started = transfer.last_at = time.monotonic()
            selector.register(transfer.sock, selectors.EVENT_READ, transfer)
        for key, _ in selector.select(timeout=0.1):
            transfer = key.data
            try:
                packet, peer = transfer.sock.recvfrom(65536)
            except BlockingIOError:
                continue
            if tftp_packet(transfer, packet, peer):
                selector.unregister(transfer.sock)
                active -= 1
        now = time.monotonic()
        for transfer in transfers:
            waiting = transfer.last_at and transfer.done_s is None and transfer.error is None
            if waiting and now - transfer.last_at > TFTP_TIMEOUT:
                transfer.retries += 1
                if transfer.retries > TFTP_RETRIES:
                    transfer.error = "timed out"
                    selector.unregister(transfer.sock)
                    active -= 1
                    continue
                transfer.sock.sendto(transfer.last_sent, transfer.server or (server, 69))
                transfer.last_at, transfer.retransmits = now, transfer.retransmits + 1
    sizes = {len(t.data) for t in transfers if t.done_s is not None}
    firsts = [t.first_byte_s for t in transfers if t.first_byte_s is not None]
    dones = [t.done_s for t in transfers if t.done_s is not None]
    for transfer in transfers:
        transfer.sock.close()
    return {
        "clients": count,
        "completed": len(dones),
        "sizes": sorted(sizes),
        "errors": sorted({t.error for t in transfers if t.error}),
        "retransmits": sum(t.retransmits for t in transfers),
        "first_byte_p50_s": percentile(firsts, 0.5),
        "first_byte_max_s": max(firsts) if firsts else None,
        "done_p50_s": percentile(dones, 0.5),
        "done_max_s": max(dones) if dones else None,
    }


def tftp_packet(transfer: Transfer, packet: bytes, peer: tuple[str, int]) -> bool:
    """Take one packet of the server's; True when the transfer has ended (whole or with an error)."""
    if len(packet) < 4:
        return False
    opcode, block = struct.unpack_from("!HH", packet)
    now = time.monotonic()
    if opcode == 5:  # ERROR
        transfer.error = packet[4:].rstrip(b"\0").decode(errors="replace")
        return True
    if transfer.server is None:
        transfer.server, transfer.first_byte_s = peer, now - transfer.started
    if peer != transfer.server:
        return False
    if opcode == 6:  # OACK: the server took blksize; acknowledge block 0
        options = packet[2:].split(b"\0")
        for name, value in zip(options[::2], options[1::2]):
            if name.lower() == b"blksize":
                transfer.blksize = int(value)
        ack = struct.pack("!HH", 4, 0)
    elif opcode == 3 and block == transfer.expected_block:
        transfer.data += packet[4:]
        transfer.expected_block = (block + 1) & 0xFFFF
        ack = struct.pack("!HH", 4, block)
        if len(packet) - 4 < transfer.blksize:
            transfer.sock.sendto(ack, peer)
            transfer.done_s = now - transfer.started
            return True
    else:
        return False  # a duplicate: the ack already sent stands
    transfer.sock.sendto(ack, peer)
    transfer.last_sent, transfer.last_at, transfer.retries = ack, now, 0
    return False


def main(argv: list[str]) -> int:
    kind = argv[0]
    if kind == "dhcp":
        interface, count, spread, give_up = argv[1], int(argv[2]), float(argv[3]), float(argv[4])
        result = dhcp_storm(interface, count, spread, give_up, *argv[5:6])
    elif kind == "tftp":
        server, filename, count, spread, give_up = argv[1], argv[2], int(argv[3]), float(argv[4]), float(argv[5])
        result = tftp_storm(server, filename, count, spread, give_up)
    else:
        print(
            f"usage: storm.py dhcp IFACE COUNT SPREAD GIVE_UP [random|sequential] | tftp SERVER FILE COUNT SPREAD GIVE_UP (not {kind!r})"
        )
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
