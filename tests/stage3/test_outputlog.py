"""A job's output kept on the node until the master acknowledges it (stage3.outputlog)."""

import threading

from hypothesis import given
from hypothesis import strategies as st

from stage3.outputlog import OutputLog

OUT, ERR = 1, 2


def test_chunks_get_their_offsets_and_stay_until_acknowledged():
    log = OutputLog()
    assert log.append(OUT, b"one\n") == 0
    assert log.append(ERR, b"err\n") == 0
    assert log.append(OUT, b"two\n") == 4
    assert log.since(0, 0) == [(OUT, 0, b"one\n"), (ERR, 0, b"err\n"), (OUT, 4, b"two\n")]
    log.ack(4, 0)
    assert log.since(4, 0) == [(ERR, 0, b"err\n"), (OUT, 4, b"two\n")] and log.held == 8


def test_a_resume_from_the_middle_of_a_chunk_sends_only_its_rest():
    log = OutputLog()
    log.append(OUT, b"hello world")
    assert log.since(6, 0) == [(OUT, 6, b"world")]
    assert log.held == 5


def test_an_ack_behind_an_earlier_one_or_beyond_what_was_read_changes_nothing_wrong():
    log = OutputLog()
    log.append(OUT, b"abcdef")
    log.ack(4, 0)
    log.ack(2, 0)  # an older ack, late
    assert log.since(0, 0) == [(OUT, 4, b"ef")]
    log.ack(1 << 62, 1 << 62)  # "all of it"
    assert log.since(0, 0) == [] and log.acked == {OUT: 6, ERR: 0}
    assert log.append(OUT, b"g") == 6  # later output is kept as before


def test_a_full_log_holds_the_reader_until_an_ack_makes_room():
    log = OutputLog(window=8)
    log.append(OUT, b"12345678")
    assert log.wait_for_room(timeout=0.05) is False  # the pump stops reading: the job blocks on its pipe
    threading.Timer(0.05, log.ack, (8, 0)).start()
    assert log.wait_for_room(timeout=5) is True


def test_a_released_log_keeps_nothing_and_never_holds_the_reader():
    log = OutputLog(window=4)
    log.append(OUT, b"12345678")
    log.release()
    log.append(OUT, b"more")
    assert log.since(0, 0) == [] and log.held == 0 and log.wait_for_room(timeout=0)


@given(
    st.lists(st.tuples(st.sampled_from([OUT, ERR]), st.binary(min_size=1, max_size=20)), max_size=30),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 400)), max_size=5),
)
def test_what_is_sent_again_is_exactly_each_streams_bytes_past_the_masters_offsets(chunks, acks):
    log = OutputLog()
    streams = {OUT: b"", ERR: b""}
    for stream, data in chunks:
        log.append(stream, data)
        streams[stream] += data
    for stdout, stderr in acks:
        log.ack(stdout, stderr)
    resume = (max(log.acked[OUT], len(streams[OUT]) // 2), max(log.acked[ERR], len(streams[ERR]) // 3))
    again = log.since(*resume)
    for stream, start in zip((OUT, ERR), resume, strict=True):
        pieces = [(offset, data) for s, offset, data in again if s == stream]
        assert b"".join(data for _, data in pieces) == streams[stream][start:]
        if pieces:
            assert pieces[0][0] == start
    assert log.held == sum(len(data) for _, _, data in again)
