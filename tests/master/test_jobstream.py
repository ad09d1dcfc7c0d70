"""The master's count of a job's output (beoboot.master.jobstream): each byte once, in order, whatever a
node sends again after a lost link or a restart."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beoboot.master.jobstream import StreamCursor

OUT, ERR = 1, 2


def test_a_resent_chunk_is_dropped_and_an_overlapping_one_trimmed():
    cursor = StreamCursor()
    assert cursor.take(OUT, 0, b"hello ").data == b"hello "
    assert cursor.take(OUT, 0, b"hello ").data == b""  # sent again after a reconnect
    taken = cursor.take(OUT, 3, b"lo world")  # half of it new
    assert (taken.data, taken.end, taken.ask_from) == (b"world", 11, False)
    assert cursor.offsets() == (11, 0)


def test_a_gap_is_asked_for_once_and_filled_by_the_resend():
    cursor = StreamCursor.at(5, 0)
    gap = cursor.take(OUT, 9, b"late")
    assert (gap.data, gap.ask_from) == (b"", True)
    assert cursor.take(OUT, 13, b"later").ask_from is False  # in flight behind the gap: asked already
    assert cursor.take(OUT, 5, b"1234late").data == b"1234late"  # the resend, from where it was asked
    assert cursor.take(OUT, 13, b"later").data == b"later"


def test_streams_are_counted_apart():
    cursor = StreamCursor()
    assert cursor.take(ERR, 0, b"oops").data == b"oops"
    assert cursor.take(OUT, 0, b"fine").data == b"fine"
    assert cursor.offsets() == (4, 4)


def test_a_stream_that_carries_no_output_is_refused_by_name():
    with pytest.raises(ValueError, match="stream 0"):
        StreamCursor().take(0, 0, b"stdin?")


@st.composite
def deliveries(draw):
    """A stream cut in chunks, and an order of arrival in which chunks come again (resends after a
    reconnect: every chunk from some point on) and come late (a gap, then its fill)."""
    data = draw(st.binary(min_size=0, max_size=300))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    chunks = [(bounds[i], data[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    arrivals = []
    for index, chunk in enumerate(chunks):
        arrivals.append(chunk)
        if draw(st.booleans()):  # the link broke here: everything from an earlier chunk comes again
            arrivals.extend(chunks[draw(st.integers(0, index)) : index + 1])
    return data, chunks, arrivals


@given(deliveries())
def test_whatever_comes_again_each_byte_is_passed_on_once_in_order(case):
    data, chunks, arrivals = case
    cursor = StreamCursor()
    passed = b""
    queue = list(arrivals)
    while queue:
        offset, chunk = queue.pop(0)
        taken = cursor.take(OUT, offset, chunk)
        passed += taken.data
        if taken.ask_from:  # the node sends everything from the cursor on, as stage3.outputlog does
            queue = [(o, c) for o, c in chunks if o + len(c) > cursor.next[OUT]] + queue
    assert passed == data


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8), st.integers(0, 10))
def test_a_chunk_arriving_early_is_asked_again_and_never_passed_out_of_order(data, cuts, late):
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    chunks = [(bounds[i], data[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    chunks = [c for c in chunks if c[1]]
    if len(chunks) < 2:
        return
    late %= len(chunks) - 1  # this chunk is lost on the way: the ones after it arrive first
    cursor = StreamCursor()
    passed = b""
    for offset, chunk in chunks[:late] + chunks[late + 1 :]:
        passed += cursor.take(OUT, offset, chunk).data
    assert passed == data[: chunks[late][0]]
    for offset, chunk in chunks[late:]:  # the resend it asked for
        passed += cursor.take(OUT, offset, chunk).data
    assert passed == data
