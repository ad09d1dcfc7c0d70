"""The /dev/kmsg record parser (agent.kmsg.parse_record) under arbitrary bytes: a record or KmsgError,
nothing else; and every record the kernel's shape allows parses back to its fields."""

from hypothesis import given
from hypothesis import strategies as st

from agent.kmsg import LEVELS, KmsgError, KmsgRecord, parse_record

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
# what the kernel writes: printable ASCII, every other byte and the backslash escaped as \xNN
MESSAGES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_record_or_kmsg_error(data):
    try:
        record = parse_record(data)
    except KmsgError as exc:
        assert "/dev/kmsg record" in str(exc)
        return
    assert isinstance(record, KmsgRecord) and 0 <= record.level < len(LEVELS)
    assert "\n" not in record.message and record.seq >= 0 and record.usec >= 0


@given(
    st.integers(min_value=0, max_value=191),
    U64,
    U64,
    st.sampled_from(["-", "c", "+"]),
    MESSAGES,
    st.lists(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ=:abc0123456789", max_size=20), max_size=3),
    st.lists(st.text("abc=0123456789", max_size=12), max_size=2),
)
def test_a_record_of_the_kernels_shape_parses_to_its_fields(priority, seq, usec, flags, message, dictionary, more):
    head = ",".join([str(priority), str(seq), str(usec), flags, *more])
    data = f"{head};{message}\n" + "".join(f" {line}\n" for line in dictionary)
    record = parse_record(data.encode())
    assert record == KmsgRecord(priority & 7, priority >> 3, seq, usec, message)
