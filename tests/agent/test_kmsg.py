"""The kernel's log reader and shipper (agent.kmsg): records parsed as the kernel writes them, read one a
read(2) without blocking, resumed after a sequence number, storms cut to a rate."""

import errno
import os
import socket

import pytest

from agent import kmsg
from agent.kmsg import KmsgError, KmsgReader, KmsgRecord, KmsgShipper, TokenBucket, parse_record


def test_a_record_gives_its_level_facility_sequence_time_and_message():
    record = parse_record(b"3,1742,93310512,-,caller=T412;Out of memory: Killed process 412 (python3)\n")
    assert record == KmsgRecord(3, 0, 1742, 93310512, "Out of memory: Killed process 412 (python3)")
    assert (record.level_name, record.seconds) == ("err", 93.310512)


def test_the_dictionary_lines_are_left_and_a_user_records_facility_kept():
    record = parse_record(b"14,7,100,c;usb 1-1: new device\n SUBSYSTEM=usb\n DEVICE=c189:1\n")
    assert (record.level, record.facility, record.message) == (6, 1, "usb 1-1: new device")


@pytest.mark.parametrize(
    "data",
    [b"", b"no semicolon here", b"6,1,2;three fields", b"x,1,2,-;bad priority", b"6,,2,-;empty seq", b"6,1,-5,-;neg"],
)
def test_a_record_of_another_shape_is_a_typed_error(data):
    with pytest.raises(KmsgError, match="/dev/kmsg record"):
        parse_record(data)


def record(seq: int, message: str = "m", level: int = 6) -> bytes:
    return f"{level},{seq},{seq * 1000},-;{message}\n".encode()


@pytest.fixture
def kernel():
    """A stand-in for /dev/kmsg: a SEQPACKET socket returns one record a read and EAGAIN when empty, as
    /dev/kmsg does."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    yield ours, lambda after_seq=None: KmsgReader(os.dup(theirs.fileno()), after_seq)
    ours.close()
    theirs.close()


def test_the_reader_takes_what_is_there_and_returns_at_once(kernel):
    writer, reader_of = kernel
    reader = reader_of()
    assert reader.read_available() == []
    for seq in range(3):
        writer.send(record(seq, f"line {seq}"))
    writer.send(b"garbage")
    assert [r.message for r in reader.read_available()] == ["line 0", "line 1", "line 2"]
    assert (reader.last_seq, reader.malformed, reader.lost) == (2, 1, 0)
    reader.close()


def test_stage_3_goes_on_after_what_stage_2_sent_and_counts_a_gap_as_lost(kernel):
    writer, reader_of = kernel
    for seq in (4, 5, 6, 9):
        writer.send(record(seq))
    reader = reader_of(5)
    assert [r.seq for r in reader.read_available()] == [6, 9]
    assert reader.lost == 2
    reader.close()


def test_an_overwritten_record_epipe_is_passed_over(kernel, monkeypatch):
    writer, reader_of = kernel
    writer.send(record(1))
    writer.send(record(7))
    reader = reader_of()
    real_read, calls = os.read, []

    def read(fd, size):
        calls.append(fd)
        if len(calls) == 2:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return real_read(fd, size)

    monkeypatch.setattr(kmsg.os, "read", read)
    assert [r.seq for r in reader.read_available()] == [1, 7] and reader.lost == 5
    reader.close()


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="this host's /dev/kmsg is not readable")
def test_the_hosts_own_kernel_log_parses_whole():
    reader = KmsgReader.open()
    records = reader.read_available()
    reader.close()
    assert records and reader.malformed == 0
    assert all(a.seq < b.seq for a, b in zip(records, records[1:]))


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_storm_is_cut_to_the_rate_and_said_in_one_line(kernel):
    writer, reader_of = kernel
    clock = Tick()
    shipped, said = [], []
    shipper = KmsgShipper(reader_of(), lambda *line: shipped.append(line), said.append, TokenBucket(10, 50, clock))
    for seq in range(150):  # a socket's buffer holds some 200 records
        writer.send(record(seq, f"storm {seq}", level=4))
    assert shipper.pump() == 50
    assert shipped[0] == ("warning", "storm 0", 0.0) and shipped[-1][1] == "storm 49"
    assert said == [
        "beoboot: kernel log: 100 records not sent (more than 10 a second), 0 overwritten before they were read"
    ]
    clock.now = 2.0  # 20 more may go
    for seq in range(150, 180):
        writer.send(record(seq))
    assert shipper.pump() == 20 and len(said) == 2
    clock.now = 100.0
    writer.send(record(180, "calm again"))
    assert shipper.pump() == 1 and shipped[-1][1] == "calm again" and len(said) == 2
    assert shipper.stop() == 180


def test_the_shipper_thread_ships_as_records_come_and_stop_returns_the_last(kernel):
    writer, reader_of = kernel
    lines = []
    shipper = kmsg.ship(lambda level, message, **kw: lines.append((level, message, kw)), print, reader=reader_of())
    assert shipper is not None
    writer.send(record(41, "first"))
    writer.send(record(42, "second", level=3))
    assert shipper.stop() == 42
    assert lines == [
        ("info", "first", {"source": "kernel", "kernel_time": 0.041}),
        ("err", "second", {"source": "kernel", "kernel_time": 0.042}),
    ]


def test_no_kmsg_is_said_not_raised(tmp_path):
    said = []
    assert kmsg.ship(print, said.append, path=str(tmp_path / "absent")) is None
    assert "kernel log not shipped" in said[0]
