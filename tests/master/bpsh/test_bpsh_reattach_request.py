"""bpsh's reattach request and option, parsed closed: a bad value is an error naming it, never a traceback."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beoboot.master.bpsh import client
from beoboot.master.bpsh.localjobs import RequestError, decode_reattach


def test_reattach_timeout_is_seconds_from_0_to_a_day():
    assert client.parse_args(["--reattach-timeout", "600", "0", "true"]).reattach_timeout == 600.0
    assert client.parse_args(["--reattach-timeout=0", "0", "true"]).reattach_timeout == 0.0
    assert client.parse_args(["0", "true"]).reattach_timeout == client.REATTACH_TIMEOUT
    for bad in ("nan", "-1", "inf", "1e9", "soon", ""):
        with pytest.raises(client.BpshUsageError, match="--reattach-timeout"):
            client.parse_args([f"--reattach-timeout={bad}", "0", "true"])


def test_a_reattach_request_names_its_jobs_and_their_offsets():
    record = b"\0".join([client.REATTACH_MAGIC, b"p", b"7:120:0:3", b"9:0:33:4"])
    assert decode_reattach(record) == ("p", [(7, 120, 0, 3), (9, 0, 33, 4)])


@pytest.mark.parametrize(
    "record",
    [
        b"bpsh1\0\0" + b"1:0:0:0",  # another magic
        client.REATTACH_MAGIC + b"\0",  # no job
        client.REATTACH_MAGIC + b"\0\0" + b"1:0:0",  # the node missing
        client.REATTACH_MAGIC + b"\0\0" + b"1:-5:0:0",
        client.REATTACH_MAGIC + b"\0\0" + b"1:0:0:" + b"9" * 40,  # a number past any
    ],
)
def test_a_malformed_reattach_request_is_refused_by_name(record):
    with pytest.raises(RequestError, match="reattach"):
        decode_reattach(record)


@given(st.binary(max_size=200))
def test_any_bytes_are_a_request_or_a_request_error(data):
    try:
        letters, wanted = decode_reattach(client.REATTACH_MAGIC + b"\0" + data)
    except RequestError:
        return
    assert all(min(fields) >= 0 for fields in wanted)
