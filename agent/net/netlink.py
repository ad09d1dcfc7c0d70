"""rtnetlink (netlink(7), rtnetlink(7)) for what the agent does to an interface: set it up, give it an IPv4
address (or take one away, when a new DHCP lease moves the node), and add a default route. No `ip` binary
in the image: messages are packed here.

The encoders are pure and table-tested; `Netlink` sends one request at a time and waits for its ACK.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

# <linux/netlink.h>
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
# <linux/rtnetlink.h>
RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWROUTE = 24
RT_TABLE_MAIN = 254
RTPROT_DHCP = 16  # who added the route, as `ip route` shows it ("proto dhcp")
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTA_OIF = 4
RTA_GATEWAY = 5
# <linux/if_addr.h>
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
# <linux/if.h>
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, protocol, scope, type, flags
_NLMSGERR = struct.Struct("=i")


class NetlinkError(OSError):
    """The kernel refused a request; errno and the request are in the message."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def rtattr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (_align(length) - length)


def nlmsg(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def link_up_message(index: int, seq: int) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP)  # change mask: touch IFF_UP only
    return nlmsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def add_address_message(index: int, address: str, prefix_len: int, seq: int) -> bytes:
    """IFA_LOCAL is the interface's own address; IFA_ADDRESS is the same on a broadcast link."""
    network = ipaddress.IPv4Interface(f"{address}/{prefix_len}").network
    packed = socket.inet_aton(address)
    body = _IFADDRMSG.pack(socket.AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE, index)
    body += rtattr(IFA_LOCAL, packed) + rtattr(IFA_ADDRESS, packed)
    if prefix_len < 31:  # RFC 3021: a /31 has no broadcast address
        body += rtattr(IFA_BROADCAST, network.broadcast_address.packed)
    return nlmsg(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq, body)


def delete_address_message(index: int, address: str, prefix_len: int, seq: int) -> bytes:
    """The kernel finds the address to delete by IFA_LOCAL and the prefix length (what `ip addr del` sends)."""
    packed = socket.inet_aton(address)
    body = _IFADDRMSG.pack(socket.AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE, index)
    body += rtattr(IFA_LOCAL, packed) + rtattr(IFA_ADDRESS, packed)
    return nlmsg(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def default_route_message(index: int, gateway: str, seq: int, *, onlink: bool = False) -> bytes:
    """0.0.0.0/0 via `gateway` out of `index`; onlink when the gateway is outside the interface's subnet."""
    body = _RTMSG.pack(
        socket.AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_DHCP,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        RTNH_F_ONLINK if onlink else 0,
    )
    body += rtattr(RTA_GATEWAY, socket.inet_aton(gateway)) + rtattr(RTA_OIF, struct.pack("=i", index))
    return nlmsg(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq, body)


@dataclass(frozen=True)
class Ack:
    seq: int
    error: int  # 0: success; otherwise a positive errno


def parse_acks(data: bytes) -> list[Ack]:
    """The NLMSG_ERROR messages in a receive buffer (error 0 is the ACK); other messages are skipped."""
    acks = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if msg_type == NLMSG_ERROR and length >= _NLMSGHDR.size + _NLMSGERR.size:
            (error,) = _NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)
            acks.append(Ack(seq, -error))
        offset += _align(length)
    return acks


def gateway_is_onlink(address: str, prefix_len: int, gateway: str) -> bool:
    return ipaddress.IPv4Address(gateway) not in ipaddress.IPv4Interface(f"{address}/{prefix_len}").network


class Netlink:
    """One NETLINK_ROUTE socket; each request waits for its own ACK."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)
        self.seq = 0

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def request(self, message: bytes, what: str) -> None:
        seq = _NLMSGHDR.unpack_from(message)[3]
        self.sock.send(message)
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise NetlinkError(0, f"netlink: no answer from the kernel to {what}") from None
            for ack in parse_acks(data):
                if ack.seq != seq:
                    continue
                if ack.error:
                    raise NetlinkError(ack.error, f"netlink: {what}: {os.strerror(ack.error)}")
                return

    def link_up(self, interface: str) -> None:
        index = socket.if_nametoindex(interface)
        self.request(link_up_message(index, self._next_seq()), f"set {interface} up")

    def add_address(self, interface: str, address: str, prefix_len: int) -> None:
        index = socket.if_nametoindex(interface)
        self.request(
            add_address_message(index, address, prefix_len, self._next_seq()),
            f"add {address}/{prefix_len} to {interface}",
        )

    def delete_address(self, interface: str, address: str, prefix_len: int) -> None:
        index = socket.if_nametoindex(interface)
        self.request(
            delete_address_message(index, address, prefix_len, self._next_seq()),
            f"delete {address}/{prefix_len} from {interface}",
        )

    def add_default_route(self, interface: str, gateway: str, *, onlink: bool = False) -> None:
        index = socket.if_nametoindex(interface)
        self.request(
            default_route_message(index, gateway, self._next_seq(), onlink=onlink),
            f"add default route via {gateway} dev {interface}",
        )

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
