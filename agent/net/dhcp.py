"""A DHCP client (RFC 2131, options RFC 2132) for a node that has no address yet.

With no address the node cannot use a UDP socket, so frames go out and come in on an AF_PACKET raw
socket: Ethernet + IPv4 + UDP are built here, checksums included. Everything but PacketTransport and
DhcpClient's waiting is pure (bytes in, data out) and table-tested in tests/agent/test_dhcp.py.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

CLIENT_PORT = 68
SERVER_PORT = 67
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET = 1
# RFC 2131 4.1: ask for a broadcast reply; a client with no address may not be able to take a unicast one.
FLAG_BROADCAST = 0x8000
ETH_P_IP = 0x0800
BROADCAST_MAC = b"\xff" * 6
VENDOR_CLASS = b"beoboot"
# RFC 2131 4.1: first retransmission after 4 s, doubling up to 64 s, each randomised by +-1 s.
BACKOFF_BASE = 4.0
BACKOFF_STEPS = 5
BACKOFF_JITTER = 1.0
NAK_RESTARTS = 3

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")


class DhcpError(Exception):
    """A malformed packet, or a server that never answered; the message says which and where."""


class Opt(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    MAX_SIZE = 57
    RENEWAL_TIME = 58  # T1
    REBINDING_TIME = 59  # T2
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    BEOBOOT_MASTER = 224  # site-specific (RFC 2132 section 2: 128-254 are private): the master's URL
    END = 255


class MsgType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


PARAMETERS_WANTED = (
    Opt.SUBNET_MASK,
    Opt.ROUTER,
    Opt.DNS,
    Opt.HOSTNAME,
    Opt.DOMAIN,
    Opt.LEASE_TIME,
    Opt.RENEWAL_TIME,
    Opt.REBINDING_TIME,
    Opt.SERVER_ID,
    Opt.BEOBOOT_MASTER,
)


@dataclass(frozen=True)
class Message:
    """One BOOTP/DHCP message; `options` maps code -> raw value (instances of a code concatenated, RFC 3396)."""

    op: int
    xid: int
    chaddr: bytes  # the 6-byte MAC address
    options: dict[int, bytes] = field(default_factory=dict)
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    sname: str = ""
    file: str = ""

    @property
    def message_type(self) -> MsgType | None:
        raw = self.options.get(Opt.MESSAGE_TYPE)
        if not raw or raw[0] not in MsgType._value2member_map_:
            return None
        return MsgType(raw[0])


@dataclass(frozen=True)
class Lease:
    interface: str
    address: str
    prefix_len: int
    router: str | None
    dns: tuple[str, ...]
    server_id: str | None
    lease_seconds: int | None
    hostname: str | None = None
    domain: str | None = None
    next_server: str | None = None  # siaddr: where a boot loader would fetch `boot_file` from
    boot_file: str | None = None
    master_url: str | None = None  # option 224
    renewal_seconds: int | None = None  # T1 (option 58); None: the client's default, half the lease
    rebinding_seconds: int | None = None  # T2 (option 59); None: the client's default, 7/8 of the lease

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_len}"


# -- options ---------------------------------------------------------------------------------------------


def encode_options(options: Sequence[tuple[int, bytes]]) -> bytes:
    """code, length, value for each; values over 255 bytes are split into instances (RFC 3396); END last."""
    out = bytearray()
    for code, value in options:
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    out.append(Opt.END)
    return bytes(out)


def decode_options(data: bytes, into: dict[int, bytes] | None = None, where: str = "options") -> dict[int, bytes]:
    """Parse an options area; a code seen twice has its values concatenated (RFC 3396)."""
    options = into if into is not None else {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            break
        if i + 1 >= len(data):
            raise DhcpError(f"DHCP {where}: option {code} at byte {i} has no length byte")
        length = data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise DhcpError(f"DHCP {where}: option {code} at byte {i} says {length} bytes, {len(value)} are left")
        options[code] = options.get(code, b"") + value
        i += 2 + length
    return options


def _ips(raw: bytes) -> tuple[str, ...]:
    return tuple(socket.inet_ntoa(raw[i : i + 4]) for i in range(0, len(raw) - len(raw) % 4, 4))


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return text or None


def prefix_length(mask: str) -> int:
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        raise DhcpError(f"DHCP subnet mask {mask!r} is not a contiguous netmask") from None


def default_prefix(address: str) -> int:
    """RFC 2131 3.3 leaves a missing mask to the client: use the address class, as the old clients did."""
    first = int(address.split(".")[0])
    return 8 if first < 128 else 16 if first < 192 else 24


def _seconds(raw: bytes | None) -> int | None:
    """A 32-bit time option (51, 58, 59); None when it is missing or too short to read."""
    return struct.unpack("!I", raw[:4])[0] if raw and len(raw) >= 4 else None


def lease_from_ack(interface: str, ack: Message) -> Lease:
    options = ack.options
    mask = _ips(options[Opt.SUBNET_MASK])[0] if len(options.get(Opt.SUBNET_MASK, b"")) >= 4 else None
    routers = _ips(options.get(Opt.ROUTER, b""))
    server_id = _ips(options.get(Opt.SERVER_ID, b""))
    return Lease(
        interface=interface,
        address=ack.yiaddr,
        prefix_len=prefix_length(mask) if mask else default_prefix(ack.yiaddr),
        router=routers[0] if routers else None,
        dns=_ips(options.get(Opt.DNS, b"")),
        server_id=server_id[0] if server_id else None,
        lease_seconds=_seconds(options.get(Opt.LEASE_TIME)),
        hostname=_text(options.get(Opt.HOSTNAME)),
        domain=_text(options.get(Opt.DOMAIN)),
        next_server=None if ack.siaddr == "0.0.0.0" else ack.siaddr,
        boot_file=_text(ack.file.encode()) if ack.file else None,
        master_url=_text(options.get(Opt.BEOBOOT_MASTER)),
        renewal_seconds=_seconds(options.get(Opt.RENEWAL_TIME)),
        rebinding_seconds=_seconds(options.get(Opt.REBINDING_TIME)),
    )


# -- BOOTP messages --------------------------------------------------------------------------------------


def encode_message(msg: Message, option_order: Sequence[int] | None = None) -> bytes:
    """The BOOTP fixed part, the magic cookie and the options (message type first, as RFC 2131 shows it)."""
    codes = list(option_order) if option_order is not None else sorted(msg.options, key=lambda c: (c != 53, 0))
    fixed = _BOOTP.pack(
        msg.op,
        HTYPE_ETHERNET,
        len(msg.chaddr),
        0,
        msg.xid,
        msg.secs,
        msg.flags,
        socket.inet_aton(msg.ciaddr),
        socket.inet_aton(msg.yiaddr),
        socket.inet_aton(msg.siaddr),
        socket.inet_aton(msg.giaddr),
        msg.chaddr.ljust(16, b"\0"),
        msg.sname.encode(),
        msg.file.encode(),
    )
    body = fixed + MAGIC_COOKIE + encode_options([(c, msg.options[c]) for c in codes])
    # RFC 1542 relays and some servers drop BOOTP messages shorter than the classic 300 bytes.
    return body.ljust(300, b"\0")


def decode_message(data: bytes) -> Message:
    if len(data) < _BOOTP.size + len(MAGIC_COOKIE):
        raise DhcpError(f"DHCP message of {len(data)} bytes is shorter than the {_BOOTP.size + 4}-byte minimum")
    op, _htype, hlen, _hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file = _BOOTP.unpack_from(data)
    if data[_BOOTP.size : _BOOTP.size + 4] != MAGIC_COOKIE:
        raise DhcpError(f"DHCP message has magic cookie {data[236:240].hex()}, not 63825363 (plain BOOTP?)")
    options = decode_options(data[_BOOTP.size + 4 :])
    overload = options.get(Opt.OVERLOAD, b"\0")[0]
    # RFC 2132 9.3: option 52 moves options into the file (1) and/or sname (2) fields.
    if overload & 1:
        decode_options(file, options, "file field")
        file = b""
    if overload & 2:
        decode_options(sname, options, "sname field")
        sname = b""
    return Message(
        op=op,
        xid=xid,
        chaddr=chaddr[: min(hlen, 16)],
        options=options,
        secs=secs,
        flags=flags,
        ciaddr=socket.inet_ntoa(ci),
        yiaddr=socket.inet_ntoa(yi),
        siaddr=socket.inet_ntoa(si),
        giaddr=socket.inet_ntoa(gi),
        sname=_text(sname) or "",
        file=_text(file) or "",
    )


def client_id(mac: bytes) -> bytes:
    """RFC 2132 9.14: hardware type then the hardware address."""
    return bytes((HTYPE_ETHERNET,)) + mac


def _common_options(mac: bytes, msg_type: MsgType, hostname: str | None) -> list[tuple[int, bytes]]:
    opts: list[tuple[int, bytes]] = [
        (Opt.MESSAGE_TYPE, bytes((msg_type,))),
        (Opt.CLIENT_ID, client_id(mac)),
        (Opt.MAX_SIZE, struct.pack("!H", 1500)),
        (Opt.VENDOR_CLASS, VENDOR_CLASS),
        (Opt.PARAMETER_LIST, bytes(PARAMETERS_WANTED)),
    ]
    if hostname:
        opts.append((Opt.HOSTNAME, hostname.encode()))
    return opts


def build_discover(xid: int, mac: bytes, secs: int = 0, hostname: str | None = None) -> bytes:
    opts = _common_options(mac, MsgType.DISCOVER, hostname)
    msg = Message(BOOTREQUEST, xid, mac, dict(opts), secs=secs, flags=FLAG_BROADCAST)
    return encode_message(msg, [code for code, _ in opts])


def build_request(xid: int, mac: bytes, offer: Message, secs: int = 0, hostname: str | None = None) -> bytes:
    """RFC 2131 4.3.2 SELECTING: ciaddr 0, 'requested IP' = yiaddr of the offer, 'server id' of the offer."""
    if Opt.SERVER_ID not in offer.options:
        raise DhcpError(f"DHCP offer of {offer.yiaddr} has no server identifier (option 54): cannot request it")
    opts = _common_options(mac, MsgType.REQUEST, hostname)
    opts[1:1] = [(Opt.REQUESTED_IP, socket.inet_aton(offer.yiaddr)), (Opt.SERVER_ID, offer.options[Opt.SERVER_ID])]
    msg = Message(BOOTREQUEST, xid, mac, dict(opts), secs=secs, flags=FLAG_BROADCAST)
    return encode_message(msg, [code for code, _ in opts])


def build_renewal_request(xid: int, mac: bytes, address: str, secs: int = 0, hostname: str | None = None) -> bytes:
    """RFC 2131 4.3.2 RENEWING/REBINDING (and table 5): ciaddr is our address, and neither 'requested IP'
    nor 'server id' is sent. No broadcast flag: we have an address, so the server answers ciaddr directly."""
    opts = _common_options(mac, MsgType.REQUEST, hostname)
    msg = Message(BOOTREQUEST, xid, mac, dict(opts), secs=secs, ciaddr=address)
    return encode_message(msg, [code for code, _ in opts])


def is_reply_for(msg: Message, xid: int, mac: bytes, wanted: Sequence[MsgType]) -> bool:
    """A reply to us: BOOTREPLY, our xid, our hardware address, and one of the message types we wait for."""
    return msg.op == BOOTREPLY and msg.xid == xid and msg.chaddr[:6] == mac and msg.message_type in wanted


# -- Ethernet + IPv4 + UDP -------------------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_frame(
    src_mac: bytes,
    payload: bytes,
    *,
    src_ip: str = "0.0.0.0",
    dst_ip: str = "255.255.255.255",
    dst_mac: bytes = BROADCAST_MAC,
) -> bytes:
    """An Ethernet II frame carrying IPv4/UDP from port 68 to port 67, with both checksums filled in."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp_sum = internet_checksum(pseudo + struct.pack("!HHHH", CLIENT_PORT, SERVER_PORT, udp_len, 0) + payload)
    udp = struct.pack("!HHHH", CLIENT_PORT, SERVER_PORT, udp_len, udp_sum or 0xFFFF) + payload
    # version 4, IHL 5; TTL 64 (RFC 1700's default); DF clear; id 0 is fine for an unfragmented datagram
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + header + udp


def decode_frame(frame: bytes, port: int = CLIENT_PORT) -> bytes | None:
    """The UDP payload of an IPv4/UDP frame to `port`, or None for any other frame.

    The UDP checksum is not checked: a frame from a sender on the same host (a veth peer) or from a NIC
    with receive offload can reach a packet socket before the checksum is filled in (CHECKSUM_PARTIAL).
    The IPv4 header checksum is always computed in software, so a bad one means a broken frame.
    """
    if len(frame) < 14 + 20 + 8 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    version_ihl = ip[0]
    ihl = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or ihl < 20 or len(ip) < ihl + 8 or ip[9] != socket.IPPROTO_UDP:
        return None
    if internet_checksum(ip[:ihl]) != 0:
        return None
    fragment = struct.unpack_from("!H", ip, 6)[0]
    if fragment & 0x3FFF:  # more-fragments flag or an offset: a DHCP reply we cannot use whole
        return None
    total_len = struct.unpack_from("!H", ip, 2)[0]
    _sport, dport, udp_len, _sum = struct.unpack_from("!HHHH", ip, ihl)
    if dport != port or udp_len < 8 or ihl + udp_len > min(total_len, len(ip)):
        return None
    return bytes(ip[ihl + 8 : ihl + udp_len])


# -- timing ----------------------------------------------------------------------------------------------


def backoff_schedule(uniform: Callable[[float, float], float], steps: int = BACKOFF_STEPS) -> list[float]:
    """Seconds to wait after each transmission: 4, 8, 16, 32, 64, each +-1 s (RFC 2131 4.1)."""
    return [BACKOFF_BASE * 2**i + uniform(-BACKOFF_JITTER, BACKOFF_JITTER) for i in range(steps)]


# -- I/O -------------------------------------------------------------------------------------------------


class Transport(Protocol):
    def send(self, frame: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes | None: ...


class PacketTransport:
    """An AF_PACKET raw socket on one interface, for IPv4 frames only."""

    def __init__(self, interface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.bind((interface, ETH_P_IP))

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        return self.sock.recv(65535) if ready else None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PacketTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DhcpClient:
    """DISCOVER -> OFFER -> REQUEST -> ACK, retransmitting on the RFC 2131 schedule; NAK starts over."""

    def __init__(
        self,
        interface: str,
        mac: bytes,
        transport: Transport,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        hostname: str | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.interface = interface
        self.mac = mac
        self.transport = transport
        self.rng = rng or random.Random()
        self.clock = clock
        self.hostname = hostname
        self.log = log
        self.started = clock()

    def _secs(self) -> int:
        return min(int(self.clock() - self.started), 0xFFFF)

    def _exchange(self, build: Callable[[], bytes], xid: int, wanted: Sequence[MsgType], what: str) -> Message:
        """Send, wait for a matching reply, retransmit (rebuilt: `secs` grows) until the schedule runs out."""
        waited = 0.0
        schedule = backoff_schedule(self.rng.uniform)
        for attempt, wait in enumerate(schedule, 1):
            self.transport.send(encode_frame(self.mac, build()))
            deadline = self.clock() + wait
            while (left := deadline - self.clock()) > 0:
                frame = self.transport.recv(left)
                if frame is None:
                    continue
                payload = decode_frame(frame)
                if payload is None:
                    continue
                try:
                    msg = decode_message(payload)
                except DhcpError as exc:
                    self.log(f"beoboot: dhcp {self.interface}: ignored a bad reply: {exc}")
                    continue
                if is_reply_for(msg, xid, self.mac, wanted):
                    return msg
            waited += wait
            if attempt < len(schedule):
                self.log(f"beoboot: dhcp {self.interface}: no answer to {what} after {waited:.0f} s, retrying")
        raise DhcpError(
            f"no DHCP server answered the {what} on {self.interface} in {waited:.0f} s "
            f"({BACKOFF_STEPS} tries, RFC 2131 backoff)"
        )

    def obtain_lease(self) -> Lease:
        for _ in range(NAK_RESTARTS):
            xid = self.rng.getrandbits(32)
            offer = self._exchange(
                lambda: build_discover(xid, self.mac, self._secs(), self.hostname), xid, [MsgType.OFFER], "DHCPDISCOVER"
            )
            reply = self._exchange(
                lambda: build_request(xid, self.mac, offer, self._secs(), self.hostname),
                xid,
                [MsgType.ACK, MsgType.NAK],
                "DHCPREQUEST",
            )
            if reply.message_type == MsgType.ACK:
                return lease_from_ack(self.interface, reply)
            self.log(f"beoboot: dhcp {self.interface}: server NAKed {offer.yiaddr}, starting over")
        raise DhcpError(f"DHCP server refused (NAK) every request on {self.interface} ({NAK_RESTARTS} tries)")
