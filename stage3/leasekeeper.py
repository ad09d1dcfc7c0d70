"""Keeping the DHCP lease while the node runs (RFC 2131 4.4.5): stage 3 runs for days, far past a lease.

Stage 2 obtained the lease; once it runs out, the DHCP server may give the address to another machine
while this node still uses it. So: at T1 the node asks the server that granted the lease to extend it
(RENEWING, unicast); from T2 on it asks any server (REBINDING, broadcast). A DHCPACK starts the cycle over
with the new times. A DHCPNAK, or a lease that runs out unanswered, means the address is no longer ours:
the node gets a fresh lease from scratch, as stage 2 did, and moves to the new address if it differs.

The schedule (`lease_times`, `send_times`) is pure and table-tested; the clock, sleeping, sockets and the
address change are injected into `LeaseKeeper`, so tests/test_leasekeeper.py drives it with a fake clock.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from agent.handoff import Handoff
from agent.net import dhcp
from agent.net.netlink import Netlink, NetlinkError, gateway_is_onlink

INFINITE_LEASE = 0xFFFFFFFF  # RFC 2132 9.2: a lease time of all ones never expires
RENEWAL_FRACTION = 0.5  # RFC 2131 4.4.5: T1 defaults to half the lease
REBINDING_FRACTION = 0.875  # ... and T2 to seven eighths of it
MIN_RETRANSMIT = 60.0  # RFC 2131 4.4.5: wait half the time left, "down to a minimum of 60 seconds"
RETRY_AFTER_FAILURE = 60.0  # after a failure with no server to wait for (a socket error, no answer to DISCOVER)
BROADCAST = "255.255.255.255"
PROC_SYS = "/proc/sys"


class Log(Protocol):
    """The supervisor's `say`: a line, and its level for the master ("info", "error")."""

    def __call__(self, message: str, level: str = "info") -> None: ...


def _quiet(message: str, level: str = "info") -> None:
    pass


# -- the schedule (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTimes:
    """Seconds after the lease was obtained."""

    renew_at: float  # T1: RENEWING, unicast to the server that granted the lease
    rebind_at: float  # T2: REBINDING, broadcast to any server
    expires_at: float


def lease_times(lease: dhcp.Lease) -> LeaseTimes | None:
    """T1, T2 and the expiry; None for a lease that never expires (no lease time, or RFC 2132's infinity).

    The server's T1 and T2 (options 58, 59) are taken when they are in order, T1 <= T2 <= lease; a server
    that sends them out of order gets the RFC's defaults rather than a node that renews after its lease.
    """
    total = lease.lease_seconds
    if total is None or total == INFINITE_LEASE:
        return None
    rebind: float | None = lease.rebinding_seconds
    if rebind is None or rebind > total:
        rebind = REBINDING_FRACTION * total
    renew: float | None = lease.renewal_seconds
    if renew is None or renew > rebind:
        renew = min(RENEWAL_FRACTION * total, rebind)
    return LeaseTimes(float(renew), float(rebind), float(total))


def send_times(start: float, deadline: float) -> list[float]:
    """When to send (and resend) a REQUEST from `start` until `deadline` (T2 when renewing, the expiry when
    rebinding): after each, wait half the time left, but at least 60 s (RFC 2131 4.4.5)."""
    times = []
    at = start
    while at < deadline:
        times.append(at)
        at += max(MIN_RETRANSMIT, (deadline - at) / 2)
    return times


def lease_from_handoff(handoff: Handoff) -> dhcp.Lease:
    """The lease as stage 2 got it: what renewing needs (the router and DNS servers are not needed)."""
    address, _, prefix = handoff.address.partition("/")
    return dhcp.Lease(
        interface=handoff.interface,
        address=address,
        prefix_len=int(prefix) if prefix else dhcp.default_prefix(address),
        router=None,
        dns=(),
        server_id=handoff.server_id,
        lease_seconds=handoff.lease_seconds,
        renewal_seconds=handoff.renewal_seconds,
        rebinding_seconds=handoff.rebinding_seconds,
    )


# -- I/O -------------------------------------------------------------------------------------------------


class DatagramTransport(Protocol):
    def send(self, payload: bytes, destination: str) -> None: ...

    def recv(self, timeout: float) -> bytes | None: ...

    def __enter__(self) -> DatagramTransport: ...

    def __exit__(self, *exc: object) -> None: ...


class UdpTransport:
    """A UDP socket on port 68 of one interface. The node has its address now, so the kernel's IP stack
    carries DHCP (no raw frames); SO_BINDTODEVICE keeps the broadcast of REBINDING, and the replies, on the
    leased interface even when the node has others."""

    def __init__(self, interface: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            self.sock.bind(("", dhcp.CLIENT_PORT))
        except OSError as exc:
            self.sock.close()
            what = f"cannot open UDP port {dhcp.CLIENT_PORT} on {interface}"
            raise OSError(exc.errno, f"{what}: {exc.strerror}") from None

    def send(self, payload: bytes, destination: str) -> None:
        self.sock.sendto(payload, (destination, dhcp.SERVER_PORT))

    def recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        return self.sock.recv(65535) if ready else None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def move_address(
    interface: str,
    old: dhcp.Lease,
    new: dhcp.Lease,
    *,
    netlink_factory: Callable[[], Netlink] = Netlink,
    proc_sys: str = PROC_SYS,
) -> None:
    """Put the new lease's address on the interface and take the old one off.

    The new address goes on first, so the node always has one. Deleting a primary address also deletes
    the secondary ones in its subnet (the new one, and stage 3's permanent BeoNSS address) unless the
    interface promotes secondaries, which only a distribution's sysctl.conf turns on: turn it on here.
    The default route is set again, to the new lease's router: a new subnet comes with its own.
    """
    with open(os.path.join(proc_sys, "net/ipv4/conf", interface, "promote_secondaries"), "w") as f:
        f.write("1\n")
    with netlink_factory() as nl:
        nl.add_address(interface, new.address, new.prefix_len)
        try:
            nl.delete_address(interface, old.address, old.prefix_len)
        except NetlinkError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:  # already gone: nothing to take off
                raise
        if new.router:
            onlink = gateway_is_onlink(new.address, new.prefix_len, new.router)
            nl.add_default_route(interface, new.router, onlink=onlink)


# -- the keeper ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    message: dhcp.Message  # a DHCPACK or DHCPNAK for our xid and MAC
    request_sent_at: float  # RFC 2131 4.4.1: a lease is counted from when the REQUEST was sent


class LeaseKeeper:
    """RENEWING at T1, REBINDING at T2, a fresh lease after a DHCPNAK or at expiry; for as long as the node runs."""

    def __init__(
        self,
        interface: str,
        mac: bytes,
        lease: dhcp.Lease,
        obtained_at: float,
        *,
        log: Log = _quiet,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        udp_factory: Callable[[str], DatagramTransport] = UdpTransport,
        packet_factory: Callable[[str], dhcp.PacketTransport] = dhcp.PacketTransport,
        client_factory: Callable[..., dhcp.DhcpClient] = dhcp.DhcpClient,
        move_address: Callable[[str, dhcp.Lease, dhcp.Lease], None] = move_address,
        moved: Callable[[dhcp.Lease], None] = lambda lease: None,
        hostname: str | None = None,
    ) -> None:
        self.interface = interface
        self.mac = mac
        self.lease = lease
        self.obtained_at = obtained_at
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.udp_factory = udp_factory
        self.packet_factory = packet_factory
        self.client_factory = client_factory
        self.move_address = move_address
        self.moved = moved  # told the new lease once the interface has its address: names and the master follow
        self.hostname = hostname

    def keep(self) -> None:
        """Cycle after cycle; returns only for a lease that never expires. A failure that leaves no server to
        wait for (a socket error, no answer to a fresh DISCOVER) is logged and tried again a minute later:
        the address is kept meanwhile, since a server that answers nobody gives it to nobody else either,
        and without it the node would lose its master."""
        self._announce()
        while True:
            try:
                if not self.keep_once():
                    return
            except (dhcp.DhcpError, OSError) as exc:
                self.log(
                    f"beoboot: dhcp {self.interface}: keeping the lease on {self.lease.address} failed: {exc}; "
                    f"trying again in {RETRY_AFTER_FAILURE:.0f} s",
                    "error",
                )
                self.sleep(RETRY_AFTER_FAILURE)

    def keep_once(self) -> bool:
        """One cycle: wait for T1, renew until T2, rebind until expiry, then act on the outcome.
        False when the lease never expires, so there is nothing to keep."""
        times = lease_times(self.lease)
        if times is None:
            return False
        self._sleep_until(self.obtained_at + times.renew_at)
        began = self.clock()
        answer = self.renew(self.obtained_at + times.rebind_at, began)
        if answer is None:
            answer = self.rebind(self.obtained_at + times.expires_at, began)
        self.settle(answer)
        return True

    def renew(self, until: float, began: float | None = None) -> Answer | None:
        """RENEWING: ask the server that granted the lease, unicast, until `until` (T2)."""
        # With no server identifier to send to (a server breaking RFC 2131 table 3), ask everyone.
        server = self.lease.server_id or BROADCAST
        return self._exchange(server, until, began, f"renewing the lease on {self.lease.address} with {server}")

    def rebind(self, until: float, began: float | None = None) -> Answer | None:
        """REBINDING: the granting server did not answer by T2; ask any server, broadcast, until `until` (expiry)."""
        return self._exchange(BROADCAST, until, began, f"rebinding the lease on {self.lease.address} (broadcast)")

    def settle(self, answer: Answer | None) -> None:
        """A DHCPACK extends the lease; a DHCPNAK or no answer at all (expiry) means starting over."""
        if answer is None:
            self.start_over(f"the lease on {self.lease.address} expired with no answer from any DHCP server")
        elif answer.message.message_type == dhcp.MsgType.NAK:
            server = _server_of(answer.message)
            self.start_over(f"DHCP server {server} refused (DHCPNAK) to extend the lease on {self.lease.address}")
        else:
            lease = self._lease_from_renewal(answer.message)
            self.log(f"beoboot: dhcp {self.interface}: {lease.address} renewed by {_server_of(answer.message)}")
            self.adopt(lease, answer.request_sent_at)

    def start_over(self, why: str) -> None:
        """RFC 2131 4.4.5: back to INIT. Same DHCP client as stage 2, over a raw socket like stage 2's."""
        self.log(f"beoboot: dhcp {self.interface}: {why}: getting a new lease", "error")
        asked_at = self.clock()  # a little before the REQUEST: the lease is counted from slightly early, the safe side
        with self.packet_factory(self.interface) as transport:
            client = self.client_factory(
                self.interface,
                self.mac,
                transport,
                rng=self.rng,
                clock=self.clock,
                hostname=self.hostname,
                log=self.log,
            )
            lease = client.obtain_lease()
        self.adopt(lease, asked_at)

    def adopt(self, lease: dhcp.Lease, obtained_at: float) -> None:
        """Take a lease as the one to keep, moving the interface to its address if that changed."""
        old = self.lease
        changed = (lease.address, lease.prefix_len) != (old.address, old.prefix_len)
        if changed:
            self.move_address(self.interface, old, lease)
            self.log(f"beoboot: dhcp {self.interface}: address {old.cidr} replaced by {lease.cidr}", "warning")
        self.lease, self.obtained_at = lease, obtained_at
        if changed:
            self.moved(lease)
        self._announce()

    def _announce(self) -> None:
        times = lease_times(self.lease)
        if times is None:
            self.log(f"beoboot: dhcp {self.interface}: the lease on {self.lease.address} never expires: no renewals")
            return
        # from now, not from when the lease was obtained: stage 3 starts a while into stage 2's lease
        now = self.clock()
        renew_in, rebind_in = (max(self.obtained_at + at - now, 0.0) for at in (times.renew_at, times.rebind_at))
        self.log(
            f"beoboot: dhcp {self.interface}: lease on {self.lease.address} for {times.expires_at:.0f} s: "
            f"renewing in {renew_in:.0f} s, rebinding in {rebind_in:.0f} s"
        )

    def _lease_from_renewal(self, ack: dhcp.Message) -> dhcp.Lease:
        """A renewal's ACK may leave out what did not change: without a subnet mask the prefix would fall
        back to the address class, and the interface would be renumbered for nothing."""
        lease = dhcp.lease_from_ack(self.interface, ack)
        return replace(
            lease,
            prefix_len=lease.prefix_len if dhcp.Opt.SUBNET_MASK in ack.options else self.lease.prefix_len,
            server_id=lease.server_id or self.lease.server_id,
        )

    def _exchange(self, destination: str, until: float, began: float | None, what: str) -> Answer | None:
        """Send the renewal REQUEST to `destination` on the RFC 2131 4.4.5 schedule until `until`; the first
        DHCPACK or DHCPNAK for it, or None. One xid for the retransmissions, so a late reply still counts."""
        times = send_times(self.clock(), until)
        if not times:
            return None
        began = times[0] if began is None else began
        xid = self.rng.getrandbits(32)
        self.log(f"beoboot: dhcp {self.interface}: {what}")
        with self.udp_factory(self.interface) as transport:
            for sent_at, wait_until in zip(times, [*times[1:], until]):
                secs = min(int(sent_at - began), 0xFFFF)  # RFC 2131 table 5: since the renewal began
                transport.send(
                    dhcp.build_renewal_request(xid, self.mac, self.lease.address, secs, self.hostname), destination
                )
                reply = self._await_reply(transport, xid, wait_until)
                if reply is not None:
                    return Answer(reply, sent_at)
        return None

    def _await_reply(self, transport: DatagramTransport, xid: int, deadline: float) -> dhcp.Message | None:
        while (left := deadline - self.clock()) > 0:
            payload = transport.recv(left)
            if payload is None:
                continue
            try:
                msg = dhcp.decode_message(payload)
            except dhcp.DhcpError as exc:
                self.log(f"beoboot: dhcp {self.interface}: ignored a bad reply: {exc}")
                continue
            if dhcp.is_reply_for(msg, xid, self.mac, (dhcp.MsgType.ACK, dhcp.MsgType.NAK)):
                return msg
        return None

    def _sleep_until(self, when: float) -> None:
        while (left := when - self.clock()) > 0:
            self.sleep(left)


def _server_of(msg: dhcp.Message) -> str:
    ids = msg.options.get(dhcp.Opt.SERVER_ID, b"")
    return socket.inet_ntoa(ids[:4]) if len(ids) >= 4 else "(no server id)"


def start(
    handoff: Handoff, log: Log, moved: Callable[[dhcp.Lease], None] = lambda lease: None
) -> threading.Thread | None:
    """Stage 3: keep the lease stage 2 obtained, in a daemon thread (it ends with the supervisor); `moved`
    is called with a new lease that changed the node's address."""
    if handoff.lease_obtained_at is None:
        log(
            f"beoboot: dhcp {handoff.interface}: stage 2 handed over no lease times: {handoff.address} will not "
            "be renewed (rebuild the images so both stages match)",
            "error",
        )
        return None
    mac = bytes.fromhex(handoff.mac.replace(":", ""))
    keeper = LeaseKeeper(
        handoff.interface, mac, lease_from_handoff(handoff), handoff.lease_obtained_at, log=log, moved=moved
    )
    thread = threading.Thread(target=keeper.keep, name="beoboot-leasekeeper", daemon=True)
    thread.start()
    return thread
