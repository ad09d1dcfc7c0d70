"""Lease keeping (RFC 2131 4.4.5): the schedule as a table, then the keeper against a fake clock, a scripted
server on the UDP side and a fake DHCP server on the raw-frame side (for a fresh lease from scratch).
The real thing, against dnsmasq in network namespaces, is in tests/integration/test_netlink_netns.py."""

import json
import random
import socket
import struct

import pytest

from agent.handoff import Handoff
from agent.net import dhcp
from agent.net.dhcp import Message, MsgType, Opt
from stage3 import leasekeeper
from stage3.leasekeeper import LeaseKeeper, LeaseTimes

MAC = bytes.fromhex("525400123456")
OTHER_MAC = bytes.fromhex("525400abcdef")
SERVER = "10.9.0.1"
OBTAINED_AT = 100.0  # the monotonic clock reads 100 when the lease is obtained
LATENCY = 0.5  # seconds from a REQUEST to its answer


def _lease(seconds=3600, t1=None, t2=None, address="10.9.0.50"):
    return dhcp.Lease("eth0", address, 24, SERVER, (), SERVER, seconds, renewal_seconds=t1, rebinding_seconds=t2)


@pytest.mark.parametrize(
    "seconds, t1, t2, expected",
    [
        (3600, None, None, LeaseTimes(1800, 3150, 3600)),  # the RFC's 0.5 and 0.875
        (3600, 1000, 2000, LeaseTimes(1000, 2000, 3600)),  # the server's own T1 and T2
        (3600, 1000, None, LeaseTimes(1000, 3150, 3600)),
        (3600, 3000, 2000, LeaseTimes(1800, 2000, 3600)),  # T1 after T2: the default T1, capped at T2
        (3600, None, 9000, LeaseTimes(1800, 3150, 3600)),  # T2 after the expiry: the default T2
        (100, None, 20, LeaseTimes(20, 20, 100)),
        (None, None, None, None),  # no lease time: nothing to renew
        (0xFFFFFFFF, 10, 20, None),  # RFC 2132 9.2: infinite
    ],
)
def test_lease_times(seconds, t1, t2, expected):
    assert leasekeeper.lease_times(_lease(seconds, t1, t2)) == expected


@pytest.mark.parametrize(
    "start, deadline, expected",
    [
        (1800, 3150, [1800, 2475, 2812.5, 2981.25, 3065.625, 3125.625]),  # half the time left, then 60 s
        (3150, 3600, [3150, 3375, 3487.5, 3547.5]),
        (0, 50, [0]),  # less than a minute left: one try
        (10, 10, []),
        (20, 10, []),  # already past the deadline: no send
    ],
)
def test_send_times(start, deadline, expected):
    assert leasekeeper.send_times(start, deadline) == expected


# -- fakes -----------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now=OBTAINED_AT):
        self.now = now
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def _reply(kind, request, address="10.9.0.50", options=None, xid=None, mac=None):
    opts = {Opt.MESSAGE_TYPE: bytes((kind,)), Opt.SERVER_ID: socket.inet_aton(SERVER), **(options or {})}
    yiaddr = address if kind != MsgType.NAK else "0.0.0.0"
    return Message(dhcp.BOOTREPLY, request.xid if xid is None else xid, mac or request.chaddr, opts, yiaddr=yiaddr)


def _times(lease=None, t1=None, t2=None, mask=True):
    opts = {Opt.LEASE_TIME: struct.pack("!I", lease)} if lease is not None else {}
    if t1 is not None:
        opts[Opt.RENEWAL_TIME] = struct.pack("!I", t1)
    if t2 is not None:
        opts[Opt.REBINDING_TIME] = struct.pack("!I", t2)
    if mask:
        opts[Opt.SUBNET_MASK] = socket.inet_aton("255.255.255.0")
    return opts


def ack(**times):
    return lambda request: _reply(MsgType.ACK, request, options=_times(**times))


def nak(request):
    return _reply(MsgType.NAK, request)


class ScriptedServer:
    """The UDP side: each REQUEST takes the next scripted answer (None: silence), LATENCY seconds later.
    Before every answer come a stray packet, and NAKs for another xid and another client: taking any of
    them would be a bug."""

    def __init__(self, clock, answers):
        self.clock, self.answers = clock, list(answers)
        self.sent = []  # (time, destination, decoded message)
        self.pending = []
        self.opened = 0

    def __call__(self, interface):
        assert interface == "eth0"
        self.opened += 1
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pending.clear()

    def send(self, payload, destination):
        request = dhcp.decode_message(payload)
        self.sent.append((self.clock.now, destination, request))
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            noise = [_reply(MsgType.NAK, request, xid=request.xid ^ 1), _reply(MsgType.NAK, request, mac=OTHER_MAC)]
            self.pending += [b"not dhcp"] + [dhcp.encode_message(m) for m in [*noise, answer(request)]]

    def recv(self, timeout):
        if self.pending:
            if len(self.pending) == 1:  # the answer itself
                self.clock.now += LATENCY
            return self.pending.pop(0)
        self.clock.now += timeout
        return None


class FrameServer:
    """The raw-frame side, for a lease from scratch: OFFER, then ACK, of `address`."""

    def __init__(self, clock, address):
        self.clock, self.address = clock, address
        self.seen = []  # (time, message type)
        self.pending = []

    def __call__(self, interface):
        assert interface == "eth0"
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def send(self, frame):
        request = dhcp.decode_message(dhcp.decode_frame(frame, port=dhcp.SERVER_PORT))
        self.seen.append((self.clock.now, request.message_type))
        kind = MsgType.OFFER if request.message_type == MsgType.DISCOVER else MsgType.ACK
        reply = dhcp.encode_frame(MAC, dhcp.encode_message(_reply(kind, request, self.address, _times(7200))))
        self.pending.append(reply[:34] + struct.pack("!HH", dhcp.SERVER_PORT, dhcp.CLIENT_PORT) + reply[38:])

    def recv(self, timeout):
        if self.pending:
            return self.pending.pop(0)
        self.clock.now += timeout
        return None


class World:
    """A keeper wired to the fakes, with what it logged and which addresses it moved."""

    def __init__(self, answers=(), lease=None, fresh_address="10.9.0.50", udp_factory=None):
        self.clock = FakeClock()
        self.server = ScriptedServer(self.clock, answers)
        self.frames = FrameServer(self.clock, fresh_address)
        self.lines = []
        self.moves = []
        self.told = []  # the leases the keeper said moved the node
        self.keeper = LeaseKeeper(
            "eth0",
            MAC,
            lease or _lease(),
            OBTAINED_AT,
            log=self.log,
            clock=self.clock,
            sleep=self.clock.sleep,
            rng=random.Random(1),
            udp_factory=udp_factory or self.server,
            packet_factory=self.frames,
            move_address=lambda i, old, new: self.moves.append((i, old.cidr, new.cidr)),
            moved=lambda lease: self.told.append((lease.cidr, self.keeper.lease is lease)),
        )

    def log(self, line, level="info"):
        self.lines.append((level, line))

    def sends(self):
        return [(t, destination) for t, destination, _ in self.server.sent]

    def logged(self, level, words):
        return [line for lvl, line in self.lines if lvl == level and words in line]


# -- the keeper ------------------------------------------------------------------------------------------


def test_renews_at_t1_unicast_and_an_ack_starts_the_next_cycle_with_its_times():
    world = World([ack(lease=7200, t1=1000), ack(lease=600, mask=False)])
    assert world.keeper.keep_once()
    assert world.clock.slept == [1800]  # T1 = half the 3600 s lease
    assert world.sends() == [(1900, SERVER)]
    assert (world.keeper.lease.lease_seconds, world.keeper.lease.renewal_seconds) == (7200, 1000)
    assert world.keeper.obtained_at == 1900  # counted from the REQUEST, not from the answer
    assert world.logged("info", "10.9.0.50 renewed by 10.9.0.1")

    assert world.keeper.keep_once()
    assert world.clock.slept == [1800, 1000 - LATENCY]  # the ACK's T1
    assert world.sends() == [(1900, SERVER), (2900, SERVER)]
    assert world.keeper.lease.lease_seconds == 600 and world.keeper.obtained_at == 2900
    assert world.keeper.lease.cidr == "10.9.0.50/24"  # an ACK without a mask keeps the prefix (class A: /8)
    assert world.moves == [] and world.frames.seen == []

    request = world.server.sent[0][2]
    assert (request.message_type, request.ciaddr, request.flags) == (MsgType.REQUEST, "10.9.0.50", 0)
    assert Opt.REQUESTED_IP not in request.options and Opt.SERVER_ID not in request.options


def test_retransmits_on_the_rfc_schedule_then_rebinds_by_broadcast():
    world = World([None] * 7 + [ack(lease=3600)])
    world.keeper.keep_once()
    t2 = OBTAINED_AT + 3150
    renewing = [1900, 2575, 2912.5, 3081.25, 3165.625, 3225.625]  # half the time left to T2, at least 60 s
    rebinding = [t2, t2 + 225]  # half the time left to the expiry at 3700
    assert world.sends() == [(t, SERVER) for t in renewing] + [(t, "255.255.255.255") for t in rebinding]
    requests = [m for _, _, m in world.server.sent]
    assert [m.secs for m in requests] == [int(t - 1900) for t in renewing + rebinding]  # since T1
    assert len({m.xid for m in requests[:6]}) == 1 and len({m.xid for m in requests[6:]}) == 1
    assert all(m.ciaddr == "10.9.0.50" and m.flags == 0 for m in requests)
    assert world.keeper.obtained_at == t2 + 225 and world.moves == [] and world.frames.seen == []
    assert world.logged("info", "rebinding the lease on 10.9.0.50 (broadcast)")


def test_a_nak_gets_a_fresh_lease_and_moves_to_its_address():
    world = World([nak], fresh_address="10.9.0.77")
    world.keeper.keep_once()
    assert world.sends() == [(1900, SERVER)]
    assert world.logged("error", "DHCP server 10.9.0.1 refused (DHCPNAK) to extend the lease on 10.9.0.50")
    assert [kind for _, kind in world.frames.seen] == [MsgType.DISCOVER, MsgType.REQUEST]
    assert world.moves == [("eth0", "10.9.0.50/24", "10.9.0.77/24")]
    assert world.told == [("10.9.0.77/24", True)]  # after the move, with the new lease already kept
    assert world.logged("warning", "address 10.9.0.50/24 replaced by 10.9.0.77/24")
    assert (world.keeper.lease.address, world.keeper.lease.lease_seconds) == ("10.9.0.77", 7200)
    assert world.keeper.obtained_at == 1900 + LATENCY  # asked for as soon as the NAK came


def test_expiry_without_an_answer_gets_a_fresh_lease_and_keeps_an_unchanged_address():
    world = World([None] * 99)
    world.keeper.keep_once()
    assert len(world.server.sent) == 6 + 4  # RENEWING to T2, REBINDING to the expiry
    assert world.logged("error", "the lease on 10.9.0.50 expired with no answer from any DHCP server")
    assert world.frames.seen[0] == (OBTAINED_AT + 3600, MsgType.DISCOVER)  # at the expiry, not before
    assert world.moves == [] and world.told == []
    assert world.keeper.lease.lease_seconds == 7200 and world.keeper.obtained_at == OBTAINED_AT + 3600


def test_a_keeper_started_after_t2_rebinds_at_once():
    world = World([ack(lease=3600)])
    world.clock.now = OBTAINED_AT + 3200  # stage 3 came up late into stage 2's lease
    world.keeper.keep_once()
    assert world.clock.slept == []
    assert world.sends() == [(OBTAINED_AT + 3200, "255.255.255.255")]  # no unicast: T2 has passed
    assert world.keeper.obtained_at == OBTAINED_AT + 3200


@pytest.mark.parametrize("seconds", [None, 0xFFFFFFFF])
def test_a_lease_that_never_expires_is_not_renewed(seconds):
    world = World(lease=_lease(seconds))
    world.keeper.keep()  # returns at once
    assert world.server.sent == [] and world.clock.slept == []
    assert world.logged("info", "the lease on 10.9.0.50 never expires")


class Stop(Exception):
    pass


def test_a_failure_is_logged_and_tried_again_a_minute_later():
    world = World([ack(lease=3600)])
    failures = [OSError(98, "cannot open UDP port 68 on eth0: Address already in use")]

    def udp_factory(interface):
        if failures:
            raise failures.pop()
        return world.server(interface)

    def sleep_until_recovered(seconds):
        world.clock.sleep(seconds)
        if len(world.clock.slept) == 3:  # T1, the retry, and the renewed lease's T1: one whole recovery
            raise Stop

    world.keeper.udp_factory = udp_factory
    world.keeper.sleep = sleep_until_recovered
    with pytest.raises(Stop):
        world.keeper.keep()
    assert world.lines[0] == (
        "info",
        "beoboot: dhcp eth0: lease on 10.9.0.50 for 3600 s: renewing in 1800 s, rebinding in 3150 s",
    )
    assert world.logged("error", "keeping the lease on 10.9.0.50 failed: [Errno 98] cannot open UDP port 68")
    assert world.clock.slept == [1800, 60, 1800 - LATENCY]  # T1, the retry, then the renewed lease's T1
    assert world.sends() == [(1960, SERVER)]


# -- stage 2 to stage 3 ----------------------------------------------------------------------------------


def test_handoff_carries_the_lease_to_the_keeper():
    handoff = Handoff(
        "http://m/",
        "52:54:00:12:34:56",
        "eth0",
        "10.9.0.50/24",
        server_id=SERVER,
        lease_seconds=3600,
        renewal_seconds=1000,
        rebinding_seconds=2000,
        lease_obtained_at=12.5,
    )
    again = Handoff.from_json(handoff.to_json())
    assert again == handoff
    assert leasekeeper.lease_from_handoff(again) == dhcp.Lease(
        "eth0", "10.9.0.50", 24, None, (), SERVER, 3600, renewal_seconds=1000, rebinding_seconds=2000
    )


def test_an_old_handoff_still_loads_and_is_not_renewed():
    old = {
        "master_url": "http://m/",
        "mac": "52:54:00:12:34:56",
        "interface": "eth0",
        "address": "10.9.0.50/24",
        "pins": {},
    }
    handoff = Handoff.from_json(json.dumps(old))
    assert (handoff.server_id, handoff.lease_seconds, handoff.lease_obtained_at) == (None, None, None)
    lines = []
    assert leasekeeper.start(handoff, lambda line, level="info": lines.append((level, line))) is None
    assert lines == [
        (
            "error",
            "beoboot: dhcp eth0: stage 2 handed over no lease times: 10.9.0.50/24 will not be "
            "renewed (rebuild the images so both stages match)",
        )
    ]
