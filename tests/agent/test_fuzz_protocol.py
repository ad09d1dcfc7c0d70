"""The node/master message decoder (agent.protocol) under arbitrary input: every message type, from raw
bytes and from arbitrary JSON, gives the message or ProtocolError, in bounded time; and every valid
message survives to_json/from_json (and a job frame encode_frame/decode_frame) unchanged."""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import types
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import protocol as p
from agent.schema import Stage

# every message shape the contract has: the HTTP bodies and replies, and the job link's frames
MESSAGES = sorted(
    {cls for cls in vars(p).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls)},
    key=lambda c: c.__name__,
)
FRAMES = sorted(p.FRAME_TYPES.values(), key=lambda c: c.__name__)
BOUND = 2.0  # seconds: any one decode, whatever it is given, on a loaded two-core machine


def decoded_or_refused(decode, cls, text):
    started = time.monotonic()
    try:
        message = decode(text)
    except p.ProtocolError as exc:
        assert str(exc)  # names something
        message = None
    assert time.monotonic() - started < BOUND
    if message is not None:
        assert isinstance(message, cls)
    return message


# --- arbitrary input ---------------------------------------------------------------------------------------

# JSON values as a hostile peer writes them: NaN and the infinities, integers far beyond 64 bits, any
# string (lone surrogates among them), nesting
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(exclude_categories=()))
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def dumped(value):
    # ensure_ascii keeps lone surrogates as \ud800 escapes, as a peer may send them
    return json.dumps(value, allow_nan=True)


@given(cls=st.sampled_from(MESSAGES), data=st.binary(max_size=512))
def test_any_bytes_are_a_message_or_a_protocol_error(cls, data):
    decoded_or_refused(lambda t: p.from_json(cls, t), cls, data)


@given(cls=st.sampled_from(MESSAGES), value=JSON_VALUES)
def test_any_json_is_a_message_or_a_protocol_error(cls, value):
    decoded_or_refused(lambda t: p.from_json(cls, t), cls, dumped(value))


# what a hostile peer puts where a number or a string belongs
def nested(depth, leaf):
    return leaf if depth == 0 else nested(depth - 1, [leaf] if depth % 2 else {"x": leaf})


HOSTILE = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        2**63,
        -(2**63) - 1,
        10**30,
        10**400,
        "\ud800",
        "a\udfffb",
        nested(20, 0),
        nested(3, float("nan")),
    ]
)


def near_valid(hint):
    """JSON for a field of type `hint`: mostly what fits, sometimes a hostile value, at any depth."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        fitting = st.one_of(*[near_valid(option) for option in typing.get_args(hint)])
    elif hint is type(None):
        fitting = st.none()
    elif origin is tuple:
        fitting = st.lists(near_valid(typing.get_args(hint)[0]), max_size=3)
    elif origin is dict:
        fitting = st.dictionaries(st.text(max_size=5), near_valid(typing.get_args(hint)[1]), max_size=3)
    elif dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        fitting = st.fixed_dictionaries(
            {}, optional={f.name: near_valid(hints[f.name]) for f in dataclasses.fields(hint)}
        )
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        fitting = st.sampled_from([m.value for m in hint])
    elif hint in (int, float):
        fitting = st.integers(min_value=-(10**6), max_value=10**6) | st.floats(allow_nan=False, allow_infinity=False)
    else:
        fitting = st.text(max_size=10) | st.booleans()
    return st.one_of(fitting, fitting, fitting, HOSTILE)


def storable(value):
    """Whether a decoded message holds only what the registry and the logs take."""
    if dataclasses.is_dataclass(value):
        return all(storable(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return all(map(storable, value))
    if isinstance(value, dict):
        return all(storable(k) and storable(v) for k, v in value.items())
    if isinstance(value, float):
        return value == value and abs(value) != float("inf")
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


@given(data=st.data())
def test_json_shaped_like_a_message_is_a_storable_message_or_a_protocol_error(data):
    cls = data.draw(st.sampled_from(MESSAGES))
    raw = data.draw(near_valid(cls))
    message = decoded_or_refused(lambda t: p.from_json(cls, t), cls, dumped(raw))
    if message is not None:
        assert storable(message), message
        assert p.from_json(cls, p.to_json(message)) == message


@given(data=st.data())
def test_any_job_frame_is_a_message_or_a_protocol_error(data):
    cls = data.draw(st.sampled_from(FRAMES))
    body = data.draw(near_valid(cls) | JSON_VALUES)
    kind = data.draw(st.sampled_from([cls.__name__]) | JSON_VALUES)
    text = data.draw(st.sampled_from([dumped({"type": kind, "body": body})]) | st.binary(max_size=256))
    decoded_or_refused(p.decode_frame, object, text)


# --- valid messages round-trip ---------------------------------------------------------------------------


def valid(hint):
    """Values of a message field's type, within what the contract allows: finite floats, 64-bit ints."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return st.one_of(*[valid(option) for option in typing.get_args(hint)])
    if hint is type(None):
        return st.none()
    if origin is tuple:
        return st.lists(valid(typing.get_args(hint)[0]), max_size=3).map(tuple)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(valid(key), valid(value), max_size=3)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, **{f.name: valid(hints[f.name]) for f in dataclasses.fields(hint)})
    if hint is Stage:  # a node is only ever in a stage that runs the agent
        return st.sampled_from(Stage.with_agent())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if hint is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)  # SQLite INTEGER
    if hint is bool:
        return st.booleans()
    if hint is str:
        return st.text(max_size=20)
    raise TypeError(hint)


@given(data=st.data())
def test_valid_messages_round_trip(data):
    cls = data.draw(st.sampled_from(MESSAGES))
    message = data.draw(valid(cls))
    assert p.from_json(cls, p.to_json(message)) == message


@given(data=st.data())
def test_valid_job_frames_round_trip(data):
    message = data.draw(valid(data.draw(st.sampled_from(FRAMES))))
    assert p.decode_frame(p.encode_frame(message)) == message


@given(data=st.data(), job=st.integers(min_value=0, max_value=2**53))
def test_job_start_frames_are_what_encode_frame_writes(data, job):
    manifest = data.draw(valid(p.JobManifest))
    assert p.job_start_frames(manifest)(job) == p.encode_frame(p.JobStart(job, manifest))


@given(data=st.data(), job=st.integers(min_value=1, max_value=10**15 - 1))
def test_a_job_start_decodes_the_same_from_its_cached_manifest(data, job):
    manifest = data.draw(valid(p.JobManifest))
    frame = p.job_start_frames(manifest)(job)
    assert p.decode_frame(frame) == p.decode_frame(frame) == p.JobStart(job, manifest)


def test_a_job_start_as_the_node_receives_it_bytes_decodes_its_manifest_once():
    """The node's WebSocket gives text frames as bytes: they take the cached path too (a warm fan-out's
    JobStart decoded whole on every job was a quarter of the node's time for it)."""
    manifest = p.JobManifest(("true",), "/bin/true", {"A": "1"}, "/", 0, 0, ())
    frames = p.job_start_frames(manifest)
    first, second = (p.decode_frame(frames(job).encode()) for job in (11, 12))
    assert (first.job, second.job) == (11, 12) and first.manifest == manifest
    assert first.manifest is second.manifest
    with pytest.raises(p.ProtocolError, match="not UTF-8"):
        p.decode_frame(frames(13).encode() + b"\xff")


@given(tail=st.text(max_size=80))
def test_a_frame_that_only_begins_as_a_job_start_is_decoded_whole_or_refused(tail):
    """Text after a JobStart's first bytes may say another type or job: it is read as the whole says."""
    text = '{"type": "JobStart", "body": {"job": 7, ' + tail
    try:
        fast = p.decode_frame(text)
    except p.ProtocolError:
        with pytest.raises(p.ProtocolError):
            p._decode_any_frame(text)
    else:
        assert fast == p._decode_any_frame(text)


def test_a_later_type_or_job_key_wins_as_json_reads_it():
    manifest = p.JobManifest(("true",), "/bin/true", {}, "/", 0, 0, ())
    start = p.encode_frame(p.JobStart(7, manifest))
    retyped = start[:-2] + ', "job": 9}}'
    assert p.decode_frame(retyped).job == 9
