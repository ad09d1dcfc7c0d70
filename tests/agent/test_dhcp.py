"""DHCP packets, options, frames and the retransmission schedule, and a whole exchange against a fake server."""

import socket
import struct

import pytest

from agent.net import dhcp, network
from agent.net.dhcp import DhcpError, Message, MsgType, Opt

MAC = bytes.fromhex("525400123456")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"\x35\x01\x02\xff", {53: b"\x02"}),
        (b"\x00\x00\x35\x01\x05\xff\x01\x04junk", {53: b"\x05"}),  # pads skipped, nothing read after END
        (b"\x03\x04\x0a\x00\x02\x02", {3: b"\x0a\x00\x02\x02"}),  # no END: the area just ends
        (b"\x0c\x02ab\x0c\x02cd\xff", {12: b"abcd"}),  # RFC 3396: instances concatenate
        (b"\xe0\x00\xff", {224: b""}),
    ],
)
def test_decode_options(raw, expected):
    assert dhcp.decode_options(raw) == expected


@pytest.mark.parametrize("raw, words", [(b"\x35", "no length byte"), (b"\x35\x05\x01", "says 5 bytes, 1 are left")])
def test_decode_options_names_the_bad_option(raw, words):
    with pytest.raises(DhcpError, match=words):
        dhcp.decode_options(raw)


def test_encode_options_splits_long_values_and_ends():
    encoded = dhcp.encode_options([(224, b"x" * 300), (53, b"\x01")])
    assert encoded[:2] == b"\xe0\xff" and encoded[257:259] == b"\xe0\x2d" and encoded[-1] == 255
    assert dhcp.decode_options(encoded) == {224: b"x" * 300, 53: b"\x01"}


@pytest.mark.parametrize(
    "mask, prefix", [("255.255.255.0", 24), ("255.255.0.0", 16), ("255.255.255.252", 30), ("0.0.0.0", 0)]
)
def test_prefix_length(mask, prefix):
    assert dhcp.prefix_length(mask) == prefix


def test_prefix_length_rejects_holes():
    with pytest.raises(DhcpError, match="255.0.255.0"):
        dhcp.prefix_length("255.0.255.0")


@pytest.mark.parametrize("address, prefix", [("10.0.2.15", 8), ("172.16.0.1", 16), ("192.168.1.5", 24)])
def test_default_prefix_by_class(address, prefix):
    assert dhcp.default_prefix(address) == prefix


def test_discover_layout():
    data = dhcp.build_discover(0xDEADBEEF, MAC, secs=3, hostname="n1")
    msg = dhcp.decode_message(data)
    assert len(data) >= 300
    assert data[240:243] == b"\x35\x01\x01"  # message type is the first option
    assert (msg.op, msg.xid, msg.secs, msg.flags, msg.chaddr) == (1, 0xDEADBEEF, 3, 0x8000, MAC)
    assert msg.message_type == MsgType.DISCOVER
    assert msg.options[Opt.CLIENT_ID] == b"\x01" + MAC
    assert msg.options[Opt.VENDOR_CLASS] == b"beoboot"
    assert msg.options[Opt.HOSTNAME] == b"n1"
    assert set(msg.options[Opt.PARAMETER_LIST]) >= {1, 3, 6, 12, 15, 51, 54, 58, 59, 224}


def _offer(options=None):
    opts = {Opt.MESSAGE_TYPE: b"\x02", Opt.SERVER_ID: socket.inet_aton("10.0.2.2"), **(options or {})}
    return Message(dhcp.BOOTREPLY, 7, MAC, opts, yiaddr="10.0.2.15", siaddr="10.0.2.2", file="pxelinux.0")


def test_request_names_the_offer_and_its_server():
    msg = dhcp.decode_message(dhcp.build_request(7, MAC, _offer()))
    assert msg.message_type == MsgType.REQUEST
    assert msg.ciaddr == "0.0.0.0"
    assert msg.options[Opt.REQUESTED_IP] == socket.inet_aton("10.0.2.15")
    assert msg.options[Opt.SERVER_ID] == socket.inet_aton("10.0.2.2")


def test_renewal_request_carries_our_address_and_nothing_of_selecting():
    data = dhcp.build_renewal_request(0xCAFEF00D, MAC, "10.0.2.15", secs=61, hostname="n1")
    # the fixed header itself: flags (bytes 10-11) clear, ciaddr (12-15) ours, yiaddr (16-19) zero
    assert data[10:12] == b"\0\0"
    assert data[12:16] == socket.inet_aton("10.0.2.15") and data[16:20] == b"\0" * 4
    assert data[240:243] == b"\x35\x01\x03"  # DHCPREQUEST, the first option
    msg = dhcp.decode_message(data)
    assert (msg.op, msg.xid, msg.secs, msg.flags, msg.chaddr) == (1, 0xCAFEF00D, 61, 0, MAC)
    assert msg.ciaddr == "10.0.2.15"
    # RFC 2131 table 5: 'requested IP' and 'server id' MUST NOT be sent in RENEWING or REBINDING
    assert Opt.REQUESTED_IP not in msg.options and Opt.SERVER_ID not in msg.options
    assert msg.options[Opt.CLIENT_ID] == b"\x01" + MAC  # the server finds the lease by it
    assert msg.options[Opt.HOSTNAME] == b"n1"


def test_request_without_server_id_is_an_error():
    offer = Message(dhcp.BOOTREPLY, 7, MAC, {Opt.MESSAGE_TYPE: b"\x02"}, yiaddr="10.0.2.15")
    with pytest.raises(DhcpError, match="option 54"):
        dhcp.build_request(7, MAC, offer)


def test_message_round_trip_and_overloaded_file_field():
    msg = _offer()
    again = dhcp.decode_message(dhcp.encode_message(msg))
    assert (again.yiaddr, again.siaddr, again.file) == ("10.0.2.15", "10.0.2.2", "pxelinux.0")
    assert again.options == msg.options
    raw = bytearray(dhcp.encode_message(_offer({Opt.OVERLOAD: b"\x01"})))
    raw[108:236] = dhcp.encode_options([(Opt.HOSTNAME, b"node7")]).ljust(128, b"\0")
    moved = dhcp.decode_message(bytes(raw))
    assert moved.options[Opt.HOSTNAME] == b"node7" and moved.file == ""


@pytest.mark.parametrize(
    "data, words",
    [(b"\x02" * 100, "shorter than"), (b"\x02" + b"\0" * 235 + b"\x01\x02\x03\x04", "magic cookie 01020304")],
)
def test_decode_message_errors(data, words):
    with pytest.raises(DhcpError, match=words):
        dhcp.decode_message(data)


def test_lease_from_ack_reads_every_option():
    ack = _offer(
        {
            Opt.MESSAGE_TYPE: b"\x05",
            Opt.SUBNET_MASK: socket.inet_aton("255.255.255.0"),
            Opt.ROUTER: socket.inet_aton("10.0.2.2") + socket.inet_aton("10.0.2.1"),
            Opt.DNS: socket.inet_aton("10.0.2.3") + socket.inet_aton("1.1.1.1"),
            Opt.HOSTNAME: b"node7",
            Opt.DOMAIN: b"cluster\0",
            Opt.LEASE_TIME: struct.pack("!I", 86400),
            Opt.BEOBOOT_MASTER: b"http://m:8080/",
        }
    )
    lease = dhcp.lease_from_ack("eth0", ack)
    assert lease == dhcp.Lease(
        interface="eth0",
        address="10.0.2.15",
        prefix_len=24,
        router="10.0.2.2",
        dns=("10.0.2.3", "1.1.1.1"),
        server_id="10.0.2.2",
        lease_seconds=86400,
        hostname="node7",
        domain="cluster",
        next_server="10.0.2.2",
        boot_file="pxelinux.0",
        master_url="http://m:8080/",
    )
    assert lease.cidr == "10.0.2.15/24"


@pytest.mark.parametrize(
    "options, lease, t1, t2",
    [
        (
            {
                Opt.LEASE_TIME: struct.pack("!I", 3600),
                Opt.RENEWAL_TIME: struct.pack("!I", 1800),
                Opt.REBINDING_TIME: struct.pack("!I", 3150),
            },
            3600,
            1800,
            3150,
        ),
        ({Opt.LEASE_TIME: struct.pack("!I", 120)}, 120, None, None),  # the client picks its defaults
        ({Opt.LEASE_TIME: b"\xff\xff\xff\xff"}, 0xFFFFFFFF, None, None),  # RFC 2132 9.2: infinite
        ({Opt.RENEWAL_TIME: b"\x00\x01", Opt.REBINDING_TIME: struct.pack("!I", 7)}, None, None, 7),  # T1 too short
        ({}, None, None, None),
    ],
)
def test_lease_from_ack_reads_lease_t1_and_t2(options, lease, t1, t2):
    parsed = dhcp.lease_from_ack("eth0", _offer({Opt.MESSAGE_TYPE: b"\x05", **options}))
    assert (parsed.lease_seconds, parsed.renewal_seconds, parsed.rebinding_seconds) == (lease, t1, t2)


@pytest.mark.parametrize(
    "msg, wanted, ok",
    [
        (_offer(), [MsgType.OFFER], True),
        (_offer(), [MsgType.ACK, MsgType.NAK], False),
        (Message(dhcp.BOOTREPLY, 8, MAC, {53: b"\x02"}), [MsgType.OFFER], False),  # other xid
        (Message(dhcp.BOOTREPLY, 7, b"\x00" * 6, {53: b"\x02"}), [MsgType.OFFER], False),  # other client
        (Message(dhcp.BOOTREQUEST, 7, MAC, {53: b"\x02"}), [MsgType.OFFER], False),  # our own broadcast
    ],
)
def test_is_reply_for(msg, wanted, ok):
    assert dhcp.is_reply_for(msg, 7, MAC, wanted) is ok


def test_checksum_rfc1071_example():
    # RFC 1071 section 3 example words; the sum is 0xddf2, so the checksum is its complement
    assert dhcp.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_frame_headers_and_checksums():
    payload = dhcp.build_discover(1, MAC)
    frame = dhcp.encode_frame(MAC, payload)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC and frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert dhcp.internet_checksum(ip) == 0
    assert socket.inet_ntoa(ip[12:16]) == "0.0.0.0" and socket.inet_ntoa(ip[16:20]) == "255.255.255.255"
    udp = frame[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert dhcp.internet_checksum(pseudo + udp) == 0
    assert struct.unpack("!HH", udp[:4]) == (68, 67)
    assert dhcp.decode_frame(frame, port=67) == payload
    assert dhcp.decode_frame(frame) is None  # to the server's port, not ours


def _reply_frame(payload: bytes, *, port=68) -> bytes:
    frame = bytearray(dhcp.encode_frame(MAC, payload))
    frame[34:38] = struct.pack("!HH", 67, port)  # the UDP checksum is left stale: it is not checked
    return bytes(frame)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:12] + b"\x86\xdd" + f[14:],  # IPv6 ethertype
        lambda f: f[:23] + b"\x06" + f[24:],  # TCP (and the header checksum no longer adds up)
        lambda f: f[:24] + b"\x00\x00" + f[26:],  # broken header checksum
        lambda f: f[:20] + b"\x20\x00" + f[22:],  # more fragments
        lambda f: f[:40],  # truncated
    ],
)
def test_decode_frame_ignores_other_frames(mutate):
    assert dhcp.decode_frame(mutate(_reply_frame(b"x" * 240))) is None


def test_decode_frame_accepts_unfinished_udp_checksum():
    frame = bytearray(_reply_frame(b"x" * 240))
    frame[40:42] = b"\x12\x34"  # CHECKSUM_PARTIAL from a veth peer
    assert dhcp.decode_frame(bytes(frame)) == b"x" * 240


@pytest.mark.parametrize(
    "jitter, expected",
    [
        (lambda lo, hi: 0.0, [4, 8, 16, 32, 64]),
        (lambda lo, hi: lo, [3, 7, 15, 31, 63]),
        (lambda lo, hi: hi, [5, 9, 17, 33, 65]),
    ],
)
def test_backoff_schedule(jitter, expected):
    assert dhcp.backoff_schedule(jitter) == expected


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeServer:
    """Answers DISCOVER with an OFFER and REQUEST with an ACK (or NAK), after dropping `drop` packets."""

    def __init__(self, clock, drop=0, nak_first=False):
        self.clock, self.drop, self.nak_first = clock, drop, nak_first
        self.sent, self.pending = [], []

    def send(self, frame):
        msg = dhcp.decode_message(dhcp.decode_frame(frame, port=67))
        self.sent.append((self.clock.now, msg))
        if self.drop:
            self.drop -= 1
            return
        kind = MsgType.OFFER if msg.message_type == MsgType.DISCOVER else MsgType.ACK
        if kind == MsgType.ACK and self.nak_first:
            kind, self.nak_first = MsgType.NAK, False
        opts = {
            Opt.MESSAGE_TYPE: bytes((kind,)),
            Opt.SERVER_ID: socket.inet_aton("10.9.0.1"),
            Opt.SUBNET_MASK: socket.inet_aton("255.255.255.0"),
            Opt.ROUTER: socket.inet_aton("10.9.0.1"),
            Opt.BEOBOOT_MASTER: b"http://10.9.0.1:8080/",
        }
        noise = Message(dhcp.BOOTREPLY, msg.xid ^ 1, MAC, dict(opts), yiaddr="10.9.0.99")  # someone else's
        reply = Message(dhcp.BOOTREPLY, msg.xid, MAC, opts, yiaddr="10.9.0.50")
        self.pending += [
            _reply_frame(b"garbage" * 40),
            _reply_frame(dhcp.encode_message(noise)),
            _reply_frame(dhcp.encode_message(reply)),
        ]

    def recv(self, timeout):
        if self.pending:
            return self.pending.pop(0)
        self.clock.now += timeout
        return None


class FixedRng:
    def __init__(self):
        self.xids = iter([0x1111, 0x2222, 0x3333])

    def getrandbits(self, n):
        return next(self.xids)

    def uniform(self, lo, hi):
        return 0.5


def test_client_exchange_with_retransmissions():
    clock = FakeClock()
    server = FakeServer(clock, drop=2)
    lines = []
    client = dhcp.DhcpClient("eth0", MAC, server, rng=FixedRng(), clock=clock, log=lines.append)
    lease = client.obtain_lease()
    assert (lease.cidr, lease.router, lease.master_url) == ("10.9.0.50/24", "10.9.0.1", "http://10.9.0.1:8080/")
    times = [t for t, _ in server.sent]
    assert times == [0.0, 4.5, 4.5 + 8.5, 4.5 + 8.5]  # two DISCOVERs lost, the third answered at once
    assert [m.secs for _, m in server.sent] == [0, 4, 13, 13]
    assert [m.message_type for _, m in server.sent] == [MsgType.DISCOVER] * 3 + [MsgType.REQUEST]
    assert all(m.xid == 0x1111 for _, m in server.sent)
    assert len([line for line in lines if "retrying" in line]) == 2


def test_client_starts_over_after_nak():
    clock = FakeClock()
    server = FakeServer(clock, nak_first=True)
    lease = dhcp.DhcpClient("eth0", MAC, server, rng=FixedRng(), clock=clock).obtain_lease()
    assert lease.address == "10.9.0.50"
    assert [(m.message_type, m.xid) for _, m in server.sent] == [
        (MsgType.DISCOVER, 0x1111),
        (MsgType.REQUEST, 0x1111),
        (MsgType.DISCOVER, 0x2222),
        (MsgType.REQUEST, 0x2222),
    ]


def test_client_gives_up_after_the_schedule():
    clock = FakeClock()
    server = FakeServer(clock, drop=99)
    with pytest.raises(DhcpError, match=r"no DHCP server answered the DHCPDISCOVER on eth0 in 126 s"):
        dhcp.DhcpClient("eth0", MAC, server, rng=FixedRng(), clock=clock).obtain_lease()
    assert len(server.sent) == 5


def _lease(master=None, dns=("10.0.2.3",), domain=None):
    return dhcp.Lease("eth0", "10.0.2.15", 24, "10.0.2.2", dns, "10.0.2.2", 3600, domain=domain, master_url=master)


@pytest.mark.parametrize(
    "cmdline, lease, configured, expected",
    [
        ({"master": "http://cmd/"}, _lease("http://dhcp/"), "http://conf/", "http://cmd/"),
        ({}, _lease("http://dhcp/"), "http://conf/", "http://dhcp/"),
        ({}, _lease(), "http://conf/", "http://conf/"),
        ({"master": ""}, _lease(), None, None),
    ],
)
def test_master_url_precedence(cmdline, lease, configured, expected):
    assert network.choose_master_url(cmdline, lease, configured) == expected


def test_resolv_conf_and_console_line():
    lease = _lease("http://m/", dns=("10.0.2.3", "10.0.2.4"), domain="cluster")
    assert network.resolv_conf(lease) == (
        "# written by beoboot from the DHCP lease on eth0\nsearch cluster\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n"
    )
    state = network.NetworkState("eth0", lease, "http://m/")
    assert network.describe(state) == "beoboot: dhcp eth0 10.0.2.15/24 router 10.0.2.2 master http://m/"
