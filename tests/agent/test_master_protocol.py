import time

import pytest

from agent import protocol as p
from agent.schema import Stage


def test_register_request_round_trips():
    hw = p.Hardware(
        "QEMU Virtual CPU",
        2,
        1048576,
        (p.PciDevice("0000:00:03.0", "0x8086", "0x100e", "0x020000", "e1000"),),
        (p.Disk("vda", 10 << 30, None),),
    )
    request = p.RegisterRequest("52:54:00:12:34:56", Stage.PXE, hw, "0.1.0")
    assert p.from_json(p.RegisterRequest, p.to_json(request)) == request


def test_defaults_fill_missing_optional_fields():
    msg = p.from_json(p.Heartbeat, '{"mac": "52:54:00:12:34:56", "stage": "stage3"}')
    assert msg.uptime is None and msg.stage is Stage.SUPERVISOR


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('{"stage": "stage1"}', "missing field 'mac'"),
        ('{"mac": "x", "stage": "stage9"}', "'stage9' is not one of stage1, stage2, stage3"),
        ('{"mac": "x", "stage": "stage1", "uptime": "long"}', "Heartbeat.uptime: expected float"),
        ('{"mac": "x", "stage": "stage1", "colour": 1}', "unknown fields ['colour']"),
        ("[1]", "expected an object"),
        ("{", "not JSON"),
    ],
)
def test_bad_messages_name_the_field(text, complaint):
    with pytest.raises(p.ProtocolError, match=complaint.replace("[", r"\[").replace("(", r"\(")):
        p.from_json(p.Heartbeat, text)


def test_nested_errors_name_the_path():
    text = '{"mac": "m", "stage": "stage1", "hardware": {"pci": [{"slot": 1}]}}'
    with pytest.raises(p.ProtocolError, match=r"RegisterRequest.hardware.pci\[0\]"):
        p.from_json(p.RegisterRequest, text)


@pytest.mark.parametrize(
    "text, mac",
    [
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef"),
        ("52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef"),
        (" 52:54:00:00:00:01 ", "52:54:00:00:00:01"),
    ],
)
def test_normalise_mac(text, mac):
    assert p.normalise_mac(text) == mac


@pytest.mark.parametrize("text", ["", "52:54:00:ab:cd", "zz:54:00:ab:cd:ef", "5254.00ab.cdef"])
def test_bad_mac(text):
    with pytest.raises(p.ProtocolError, match="not a MAC address"):
        p.normalise_mac(text)


def test_names():
    assert (p.node_name(0), p.node_hostname(0), p.node_hostname(12, "node")) == (".0", "n0", "node12")


@pytest.mark.parametrize(
    "name, ok", [("dhcp", True), ("stage3_ready", True), ("Bad", False), ("a b", False), ("x" * 41, False)]
)
def test_event_names(name, ok):
    if ok:
        assert p.check_event_name(name) == name
    else:
        with pytest.raises(p.ProtocolError):
            p.check_event_name(name)


def test_job_frame_round_trips_and_errors_name_the_item():
    files = (p.JobFile("/usr/bin/true", 0o755, "ab" * 32, 10), p.JobFile("/lib64", 0o777, link="usr/lib64"))
    start = p.JobStart(7, p.JobManifest(("true",), "/usr/bin/true", {"LANG": "C"}, "/", 0, 0, files))
    text = p.encode_frame(start)
    assert p.decode_frame(text) == start
    bad_file = text.replace('"mode": 511', '"mode": "511"')
    with pytest.raises(p.ProtocolError, match=r"JobStart.manifest.files\[1\].mode: expected int, got str"):
        p.decode_frame(bad_file)
    bad_env = text.replace('"LANG": "C"', '"LANG": 1')
    with pytest.raises(p.ProtocolError, match=r"JobStart.manifest.env\['LANG'\]: expected str"):
        p.decode_frame(bad_env)
    with pytest.raises(TypeError, match="cannot hold"):
        p.encode_frame(p.JobSignal(1, object()))  # type: ignore[arg-type]


# --- what a message may hold: bounded, storable, and refused naming the type and field -------------------

MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize(
    "cls, text, complaint",
    [
        (p.Heartbeat, f'{{"mac": "{MAC}", "stage": "stage1", "uptime": -Infinity}}', "Heartbeat.uptime: .*-Infinity"),
        (p.LogBatch, f'{{"mac": "{MAC}", "sent_mono": NaN, "lines": []}}', "LogBatch.sent_mono: .*NaN"),
        (
            p.EventBatch,
            f'{{"mac": "{MAC}", "sent_mono": 1e999, "events": []}}',
            "EventBatch.sent_mono: .*beyond a float",
        ),
        (
            p.LogBatch,
            f'{{"mac": "{MAC}", "sent_mono": 1, "lines": [], "dropped": {"9" * 400}}}',
            "LogBatch.dropped: .*400 digits, beyond 64 bits",
        ),
        (
            p.RegisterRequest,
            f'{{"mac": "{MAC}", "stage": "stage1", "hardware": {{"cpus": {2**63}}}}}',
            r"RegisterRequest.hardware.cpus: .*beyond 64 bits",
        ),
        (
            p.Heartbeat,
            f'{{"mac": "{MAC}", "stage": "stage1", "uptime": {"9" * 400}}}',
            "Heartbeat.uptime: .*400 digits",
        ),
        (
            p.LogBatch,
            f'{{"mac": "{MAC}", "sent_mono": 1, "lines": [{{"mono": 1, "stage": "stage1", "level": "\\ud800", '
            '"message": ""}]}',
            r"LogBatch.lines\[0\].level: .*lone surrogate",
        ),
        (p.RegisterRequest, '{"mac": ' + "[" * 40 + "]" * 40 + "}", "RegisterRequest: nested deeper than 16 levels"),
        (p.RegisterRequest, "[" * 100_000 + "]" * 100_000, "RegisterRequest: nested deeper than 16 levels"),
        (p.RegisterRequest, b'{"mac": "\xff"}', "RegisterRequest: not UTF-8"),
    ],
)
def test_values_no_message_may_hold_are_refused_naming_the_field(cls, text, complaint):
    with pytest.raises(p.ProtocolError, match=complaint):
        p.from_json(cls, text)


def test_a_message_longer_than_the_limit_is_refused_unread():
    text = '{"mac": "' + "a" * p.MAX_MESSAGE_BYTES + '"}'
    with pytest.raises(p.ProtocolError, match=r"RegisterRequest: \d+ bytes, more than the \d+ a message may have"):
        p.from_json(p.RegisterRequest, text)


def test_a_job_frame_with_a_refused_value_names_its_type_and_field():
    with pytest.raises(p.ProtocolError, match="JobExit.status: .*NaN"):
        p.decode_frame('{"type": "JobExit", "body": {"job": 1, "status": NaN}}')
    with pytest.raises(p.ProtocolError, match="job frame: nested deeper"):
        p.decode_frame("[" * 50 + "]" * 50)


@pytest.mark.parametrize(
    "text",
    [
        "[" + ",".join(["9" * 4000] * 250) + "]",  # a megabyte of the longest integers Python parses
        "[" * 500_000 + "]" * 500_000,
        "[[]" * 300_000 + "]" * 300_000,
        '{"mac": "' + "\\\\" * 400_000 + '"}',
    ],
)
def test_a_hostile_megabyte_is_refused_in_bounded_time(text):
    started = time.monotonic()
    with pytest.raises(p.ProtocolError):
        p.from_json(p.RegisterRequest, text)
    assert time.monotonic() - started < 1.0


def test_a_message_type_first_decoded_by_many_threads_at_once():
    """A simulator's nodes decode their first job frame at the same moment: the converter a type builds at
    its first use must be whole for every thread (it once was seen half-built: KeyError 'files')."""
    import dataclasses
    import sys
    import threading

    from agent import protocol

    failures = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads change hands as often as the interpreter allows
    try:
        _decode_fresh_types_at_once(protocol, dataclasses, threading, failures)
    finally:
        sys.setswitchinterval(switch)
    assert not failures, failures[:3]


def _decode_fresh_types_at_once(protocol, dataclasses, threading, failures):
    for round_ in range(40):
        # fields of types never seen before, so building the converter takes long enough to be interrupted
        inner = [dataclasses.make_dataclass(f"Inner{round_}x{i}", [("a", int), ("b", str)]) for i in range(40)]
        fields = [(f"f{i}", tuple[inner[i], ...], dataclasses.field(default=())) for i in range(40)]
        cls = dataclasses.make_dataclass(f"Fresh{round_}", fields, frozen=True)
        raw = {f"f{i}": [] for i in range(40)}
        start = threading.Barrier(8)

        def decode(cls=cls, raw=raw, start=start):
            start.wait()
            try:
                protocol.from_dict(cls, raw)
            except Exception as exc:  # noqa: BLE001 - any exception is the failure this test looks for
                failures.append(exc)

        threads = [threading.Thread(target=decode) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
