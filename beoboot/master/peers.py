"""Who is at the other end of a TCP connection to beoserv: a process on this host (and which uid owns its
socket), or another host (and whether it sent from a privileged port).
"""

# The owner comes from the kernel's table of sockets: the peer's socket is the one whose local end is the
# peer's address and port and whose remote end is ours. NETLINK_SOCK_DIAG looks that one socket up by its
# four-tuple (no dump of the table: the same cost for one socket or ten thousand); /proc/net/tcp{,6}, read
# line by line, stands in where sock_diag is not available. Only sockets of beoserv's own network
# namespace are in either table, so a socket found there is a process on this host: that, and not the
# address alone, is what "local" means here.
#
# A socket its process has closed is no longer a process's: the kernel keeps a mini-socket for it (FIN-WAIT-2,
# TIME-WAIT) that both tables report as uid 0 and inode 0, whoever opened it. A user who sends a registration
# and closes at once would pass for root if that uid were taken, so a socket held by no process (inode 0)
# vouches for no one (PeerClosed).

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_REQ_HEAD = struct.Struct("=BBBxI")  # family, protocol, extensions, states
_SOCKID_PORTS = struct.Struct("!HH")  # source port, destination port (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie (two words)
NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: any socket with that four-tuple
ALL_STATES = 0xFFFFFFFF
_DIAG_UID_OFFSET = 4 + 48 + 12  # inet_diag_msg: family..retrans, sockid, expires, rqueue, wqueue, then uid
_DIAG_INODE_OFFSET = _DIAG_UID_OFFSET + 4  # then the inode: 0 when no process holds the socket
RESERVED_PORTS = 1024  # below it, only root (CAP_NET_BIND_SERVICE) binds


class PeerLookupError(OSError):
    """The kernel's socket table could not be asked (neither sock_diag nor /proc/net)."""


class PeerClosed(PeerLookupError):
    """The peer's socket is in the table but no process holds it any more: who opened it cannot be told."""

    def __init__(self) -> None:
        super().__init__(errno.ENOTCONN, "its socket was closed before beoserv could ask the kernel whose it was")


Endpoint = tuple[str, int]


def _normal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the kernel files the socket: an IPv4 peer of a dual-stack listener ("::ffff:a.b.c.d")
    has an IPv4 socket."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    try:
        return _normal(host).is_loopback
    except ValueError:
        return False


def diag_request(peer: Endpoint, ours: Endpoint, seq: int = 1) -> bytes:
    """SOCK_DIAG_BY_FAMILY for the one TCP socket whose local end is `peer` and remote end `ours`."""
    src, dst = _normal(peer[0]), _normal(ours[0])
    if src.version != dst.version:
        raise ValueError(f"peer {peer[0]} and our end {ours[0]} are of different address families")
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    body = (
        _REQ_HEAD.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES)
        + _SOCKID_PORTS.pack(peer[1], ours[1])
        + src.packed.ljust(16, b"\0")
        + dst.packed.ljust(16, b"\0")
        + _SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE)
    )
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def parse_diag_reply(data: bytes) -> int | None:
    """The uid in a sock_diag answer; None when the kernel has no such socket (ENOENT)."""
    if len(data) < _NLMSGHDR.size:
        raise PeerLookupError(errno.EPROTO, "short sock_diag answer")
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
        if -code == errno.ENOENT:
            return None
        raise PeerLookupError(-code, f"sock_diag: {errno.errorcode.get(-code, -code)}")
    if kind != SOCK_DIAG_BY_FAMILY or len(data) < _NLMSGHDR.size + _DIAG_INODE_OFFSET + 4:
        raise PeerLookupError(errno.EPROTO, f"unexpected sock_diag answer of type {kind}")
    uid, inode = struct.unpack_from("=II", data, _NLMSGHDR.size + _DIAG_UID_OFFSET)
    if inode == 0:
        raise PeerClosed()
    return uid


def owner_by_sock_diag(peer: Endpoint, ours: Endpoint) -> int | None:
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)  # the kernel answers at once; a hung answer must not hang beoserv
            nl.send(diag_request(peer, ours))
            return parse_diag_reply(nl.recv(8192))
    except PeerLookupError:
        raise
    except OSError as exc:
        raise PeerLookupError(exc.errno, f"sock_diag: {exc.strerror or exc}") from None


def _proc_hex(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """How /proc/net/tcp{,6} prints an endpoint: the address's 32-bit words in host order, then the port."""
    words = struct.unpack(f"={len(address.packed) // 4}I", address.packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def owner_from_proc(peer: Endpoint, ours: Endpoint, proc_net: str = "/proc/net") -> int | None:
    """The same answer from /proc/net/tcp or tcp6: a read of the whole table, for kernels without
    sock_diag. An IPv4 peer may be an IPv6 socket connected to a v4-mapped address (::ffff:a.b.c.d), which
    only tcp6 lists."""
    src, dst = _normal(peer[0]), _normal(ours[0])
    tables = [("tcp6" if src.version == 6 else "tcp", src, dst)]
    if src.version == 4 and dst.version == 4:
        tables.append(
            (
                "tcp6",
                ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + src.packed),
                ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + dst.packed),
            )
        )
    for name, local_address, remote_address in tables:
        local, remote = _proc_hex(local_address, peer[1]), _proc_hex(remote_address, ours[1])
        uid = _owner_in_table(f"{proc_net}/{name}", local, remote)
        if uid is not None:
            return uid
    return None


def _owner_in_table(path: str, local: str, remote: str) -> int | None:
    try:
        with open(path, encoding="ascii") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[1] == local and fields[2] == remote:
                    if fields[9] == "0":
                        raise PeerClosed()
                    return int(fields[7])
    except PeerClosed:
        raise
    except FileNotFoundError:
        if path.endswith("tcp6"):
            return None  # a kernel without IPv6 has no IPv6 sockets
        raise PeerLookupError(errno.ENOENT, f"{path}: no such file") from None
    except OSError as exc:
        raise PeerLookupError(exc.errno, f"{path}: {exc.strerror}") from None
    return None


def socket_owner(peer: Endpoint, ours: Endpoint) -> int | None:
    """The uid owning the peer's socket when the peer is a process on this host; None when it is not
    (another host, or another network namespace)."""
    try:
        return owner_by_sock_diag(peer, ours)
    except PeerClosed:
        raise
    except PeerLookupError:
        return owner_from_proc(peer, ours)
