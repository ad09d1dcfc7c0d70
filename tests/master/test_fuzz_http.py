"""Fuzz beoserv's HTTP inputs: any path, query and body a client sends to any route gets an answer below
500, quickly, and leaves nothing in the log that a node or client could have forged. A real beoserv, with
one registered node so that the node routes reach the registry."""

from __future__ import annotations

import http.client
import json
import os
import time
from urllib.parse import quote_from_bytes, urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from master_helpers import MasterProcess

from agent import protocol as p

MAC = "02:be:0b:0f:0f:01"
ROUTES = [
    p.REGISTER_PATH,
    p.HEARTBEAT_PATH,
    p.EVENTS_PATH,
    p.LOGS_PATH,
    p.NODES_PATH,
    p.HOSTS_PATH,
    p.TIMELINE_PATH.replace("{node}", "0"),
    p.STATUS_PATH,
    p.JOBS_PATH,
    "/objects/sha256/" + "0" * 64,
    "/manifest.json",
    "/",
]
SLOW = 5.0  # seconds: far above any answer beoserv gives, far below a hang


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzzhttp")
    (work / "boot").mkdir()
    server = MasterProcess(work / "boot", work / "nodes.db", work / "beoserv.log").start()
    requests.post(server.url + p.REGISTER_PATH, json={"mac": MAC, "stage": "stage1"}, timeout=5).raise_for_status()
    yield server
    server.stop()


def ask(master: MasterProcess, method: str, target: str, body: bytes | None) -> int:
    where = urlsplit(master.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=SLOW)
    try:
        started = time.monotonic()
        conn.request(method, target, body=body, headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
        assert time.monotonic() - started < SLOW, f"{method} {target} took {time.monotonic() - started:.1f}s"
        return status
    finally:
        conn.close()


segments = st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe=""))
hostile_numbers = st.sampled_from(
    ["9" * 30, "-1", "1e400", "NaN", "-Infinity", "0x10", "%C2%B2", "%00", "." * 300]
)  # %C2%B2: a digit to str.isdigit, not to int()
path_parts = st.lists(
    st.one_of(segments, hostile_numbers, st.sampled_from(["..", ".", "", "n0", ".0", MAC])), max_size=6
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), extra=path_parts, query=segments)
def test_any_path_gets_an_answer_below_500(master, route, extra, query):
    target = "/".join([route.rstrip("/"), *extra]) + (f"?{query}" if query else "")
    assert ask(master, "GET", target, None) < 500, target


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
node_fields = st.fixed_dictionaries(
    {},
    optional={
        "mac": st.one_of(st.just(MAC), st.text(max_size=20)),
        "stage": st.sampled_from(["stage1", "stage3", "x"]),
        "uptime": json_values,
        "events": json_values,
        "lines": json_values,
        "hardware": json_values,
        "address": json_values,
    },
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    route=st.sampled_from([p.REGISTER_PATH, p.HEARTBEAT_PATH, p.EVENTS_PATH, p.LOGS_PATH]),
    body=st.one_of(
        st.binary(max_size=200),
        node_fields.map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: repr(v).encode()),
    ),
)
def test_any_body_a_node_route_is_sent_gets_an_answer_below_500(master, route, body):
    assert ask(master, "POST", route, body) < 500, (route, body)


def test_the_log_has_no_traceback_after_the_fuzzing(master):
    text = master.log_text()
    assert "Traceback" not in text, text[-3000:]
    assert os.path.getsize(master.log_path) < 50 << 20  # each refusal is a line, not a page
