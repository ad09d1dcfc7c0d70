"""The agent's HTTP client (agent.httpclient) against real sockets on loopback: every way an answer can go
wrong is an HttpError naming the URL, connections are kept alive and reopened, and the agent's users of it
(download, masterlink, libcache) keep what they did with requests: Retry-After, refusals with their
reason, the token header, the reserved source port, resume."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from servers import free_port, ok, scripted_http

from agent import protocol as p
from agent.download import Backoff, DownloadError, fetch
from agent.httpclient import Connection, HttpError, Pool, split_url
from agent.masterlink import MasterBusy, MasterLink, MasterLinkError, RegistrationRefused, busy_wait
from agent.schema import Stage
from stage3.libcache import LibCache, LibCacheError

MAC = "02:be:0b:00:00:01"


def answering(data: bytes, keep: bool = False):
    """An answer that sends `data` and closes the connection (or keeps it, for the next request)."""

    def answer(sock, request):
        sock.sendall(data)
        return keep

    return answer


def get(url: str, timeout: float = 5.0, **kwargs):
    return Connection(timeout).request("GET", url, **kwargs)


# --- failures, each one HttpError naming the URL ----------------------------------------------------------


def test_a_refused_connect_names_the_url_and_what_to_check():
    url = f"http://127.0.0.1:{free_port()}/manifest.json"
    with pytest.raises(HttpError) as caught:
        get(url)
    assert str(caught.value).startswith(f"{url}: cannot connect: Connection refused")
    assert caught.value.errno == errno.ECONNREFUSED and "beoboot.master" in caught.value.hint


def test_a_connect_that_gets_no_answer_times_out():
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        held: list[socket.socket] = []
        try:
            try:  # fill the accept queue: the kernel then drops further SYNs, as for a host that is gone
                for _ in range(16):
                    held.append(socket.create_connection(("127.0.0.1", port), timeout=0.3))
                pytest.skip("this kernel does not drop connects to a full accept queue")
            except TimeoutError:
                pass
            started = time.monotonic()
            with pytest.raises(HttpError, match=r"cannot connect: no answer within 0.3s"):
                get(f"http://127.0.0.1:{port}/x", timeout=0.3)
            assert time.monotonic() - started < 3
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"", "closed the connection without answering"),
        (b"HELLO WORLD\r\n\r\n", "not an HTTP answer: 'HELLO WORLD"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 " + b"x" * 70000 + b"\r\n\r\n", r"not an HTTP answer \(got more than 65536 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "bad HTTP answer .*more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"y" * 70000 + b"\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this", "broke after 9 of 1000 bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "broke in the middle"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", "broke in the middle"),
    ],
)
def test_a_bad_or_cut_off_answer_is_an_http_error(answer, complaint):
    with scripted_http(answering(answer)) as server:
        url = server.url + "/api/v1/register"
        with pytest.raises(HttpError, match=complaint) as caught:
            get(url)
    assert str(caught.value).startswith(url + ": ")


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst bytes"])
def test_a_master_that_stalls_before_or_during_its_answer_times_out(sent):
    released = threading.Event()

    def stall(sock, request):
        sock.sendall(sent)
        released.wait(10)
        return False

    try:
        with scripted_http(stall) as server:
            started = time.monotonic()
            with pytest.raises(HttpError, match=r"the master sent nothing for 0.3s \(hint: .*overloaded"):
                get(server.url + "/x", timeout=0.3)
            assert time.monotonic() - started < 3
    finally:
        released.set()


def test_a_header_the_request_cannot_carry_is_an_http_error_not_a_value_error():
    with scripted_http(answering(ok())) as server:
        with pytest.raises(HttpError, match="cannot send the request"):
            get(server.url + "/x", headers={p.LINK_TOKEN_HEADER: "a\nInjected: yes"})
        assert server.requests == []


@pytest.mark.parametrize("url", ["https://master/x", "ftp://master/x", "http:///x", "http://master:99999/x", ""])
def test_a_url_the_agent_cannot_use_is_an_http_error(url):
    with pytest.raises(HttpError):
        get(url)


# --- bodies and their limits ------------------------------------------------------------------------------


def test_a_body_longer_than_its_limit_is_refused_before_or_while_it_arrives():
    with scripted_http(answering(ok(b"x" * 100))) as server:
        with pytest.raises(HttpError, match="has 100 bytes, more than the 10 expected"):
            get(server.url + "/x", limit=10)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8\r\n12345678\r\n" * 4 + b"0\r\n\r\n"
    with scripted_http(answering(chunked)) as server:
        with pytest.raises(HttpError, match="more than the 10 bytes expected"):
            get(server.url + "/x", limit=10)
        assert get(server.url + "/x").body == b"12345678" * 4


def test_an_error_text_is_read_only_in_part():
    error = b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"e" * 100000
    with scripted_http(answering(error, keep=True)) as server:
        connection = Connection(5)
        with connection.stream("GET", server.url + "/x") as response:
            assert response.status == 500 and response.text(limit=20) == "e" * 20
        connection.request("GET", server.url + "/x")
        assert server.connections == 2  # the rest was never read: the connection went with it


# --- connections ------------------------------------------------------------------------------------------


def test_one_connection_carries_request_after_request():
    with scripted_http(answering(ok(), keep=True)) as server:
        connection = Connection(5)
        for _ in range(5):
            assert connection.request("POST", server.url + "/api/v1/heartbeat", body=b"{}").body == b"ok"
        assert server.connections == 1 and len(server.requests) == 5
        connection.close()


def test_a_connection_the_master_closed_while_idle_is_opened_again():
    """The master's keep-alive timeout closes an idle connection: the next request must not fail on it."""
    with scripted_http(answering(ok(), keep=False)) as server:
        connection = Connection(5)
        for _ in range(3):
            assert connection.request("GET", server.url + "/x").body == b"ok"
            time.sleep(0.2)  # the server's close arrives
        assert server.connections == 3


def test_a_connection_told_to_close_is_closed_and_opened_again():
    with scripted_http(answering(ok(b"ok", "Connection: close"), keep=True)) as server:
        connection = Connection(5)
        assert connection.request("GET", server.url + "/x").body == b"ok"
        assert connection.request("GET", server.url + "/y").body == b"ok"
        assert server.connections == 2


def test_the_pool_opens_no_more_connections_than_threads_and_reuses_them():
    with scripted_http(answering(ok(b"object"), keep=True)) as server:
        pool = Pool(5, keep=4)

        def worker():
            for _ in range(10):
                with pool.stream("GET", server.url + "/objects/x") as response:
                    assert b"".join(response.chunks()) == b"object"

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(server.requests) == 40 and server.connections <= 4
        pool.close()


# --- the agent's users of it ------------------------------------------------------------------------------


def json_answer(status: int, reason: str, message: object, *extra: str) -> bytes:
    body = json.dumps(message).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_a_busy_master_is_waited_for_as_long_as_its_retry_after_says():
    busy = json_answer(503, "Service Unavailable", {"error": "beoserv holds 64 MiB: retry shortly"}, "Retry-After: 7")
    with scripted_http(answering(busy)) as server:
        sleeps: list[float] = []
        link = MasterLink(server.url, MAC, Stage.SUPERVISOR, backoff=Backoff(first=0.01), sleep=sleeps.append)
        with pytest.raises(MasterBusy, match="retry shortly") as caught:
            link.register(attempts=2)
    assert caught.value.retry_after == 7 and sleeps == [7]


def test_a_refused_registration_says_the_masters_reason():
    refused = json_answer(403, "Forbidden", {"error": "source port 40000 is not privileged"})
    with scripted_http(answering(refused)) as server:
        link = MasterLink(server.url, MAC, Stage.SUPERVISOR, sleep=lambda s: None)
        with pytest.raises(RegistrationRefused, match="refused the registration: source port 40000 is not"):
            link.register(attempts=1)


def test_an_unreachable_master_is_a_master_link_error_not_a_traceback():
    link = MasterLink(f"http://127.0.0.1:{free_port()}", MAC, Stage.SUPERVISOR, timeout=1, sleep=lambda s: None)
    with pytest.raises(MasterLinkError, match="unreachable after 2 tries: .*cannot connect: Connection refused"):
        link.register(attempts=2)
    assert link.heartbeat() is None and link.hosts() is None


def test_messages_carry_the_token_on_one_connection_and_registration_comes_from_a_reserved_port():
    reply = p.RegisterReply(3, ".3", "n3", "10.54.0.13", 1, 5.0, 30.0, link_token="t0ken")
    answers = {
        p.REGISTER_PATH: json_answer(200, "OK", json.loads(p.to_json(reply)), "Connection: close"),
        p.HEARTBEAT_PATH: json_answer(200, "OK", json.loads(p.to_json(p.HeartbeatReply(3, p.NodeState.UP, 5.0)))),
        p.EVENTS_PATH: json_answer(200, "OK", json.loads(p.to_json(p.Accepted(1)))),
        p.LOGS_PATH: json_answer(200, "OK", json.loads(p.to_json(p.Accepted(1)))),
        p.HOSTS_PATH: ok(b"10.54.0.13 n3 .3\n"),
    }

    def answer(sock, request):
        sock.sendall(answers[request.target])
        return request.target != p.REGISTER_PATH

    with scripted_http(answer) as server:
        link = MasterLink(server.url, MAC, Stage.SUPERVISOR)
        link.register()
        link.event(p.BootEvent.STAGE3_READY)
        link.queue_log("INFO", "a line")
        assert link.flush(force=True)
        assert link.heartbeat(1.0) is not None and link.hosts() == "10.54.0.13 n3 .3\n"
    register, *others = server.requests
    assert register.headers["connection"] == "close" and p.LINK_TOKEN_HEADER.lower() not in register.headers
    if os.geteuid() == 0:
        assert 512 <= register.peer[1] < 1024
    assert [r.target for r in others] == [p.EVENTS_PATH, p.LOGS_PATH, p.HEARTBEAT_PATH, p.HOSTS_PATH]
    assert all(r.headers.get(p.LINK_TOKEN_HEADER.lower()) == "t0ken" for r in others[:3])
    assert {r.connection for r in others} == {1}  # one kept-alive connection after the registration's own


def test_an_object_fetch_carries_the_token(tmp_path):
    content = b"library bytes"
    digest = hashlib.sha256(content).hexdigest()
    with scripted_http(answering(ok(content), keep=True)) as server:
        env_root = tmp_path / "env"
        env_root.mkdir()
        cache = LibCache(str(env_root / ".libcache"), str(env_root), server.url, token=lambda: "t0ken")
        assert cache.ensure([p.JobFile("/usr/lib/libx.so", 0o644, digest, len(content))]) == 1
    assert server.requests[0].target == p.OBJECTS_PATH.format(digest=digest)
    assert server.requests[0].headers[p.LINK_TOKEN_HEADER.lower()] == "t0ken"


def test_an_object_longer_than_the_manifest_says_is_not_taken(tmp_path):
    content = b"library bytes"
    digest = hashlib.sha256(content).hexdigest()
    with scripted_http(answering(ok(content + b"and more"), keep=True)) as server:
        env_root = tmp_path / "env"
        env_root.mkdir()
        cache = LibCache(str(env_root / ".libcache"), str(env_root), server.url)
        with pytest.raises(LibCacheError, match="more than the 13 expected"):
            cache.ensure([p.JobFile("/usr/lib/libx.so", 0o644, digest, len(content))])
        assert os.listdir(env_root / ".libcache/tmp") == []


def test_a_download_cut_off_midway_resumes_where_it_broke(tmp_path):
    data = os.urandom(100_000)
    etag = '"v1"'

    def answer(sock, request):
        if "range" not in request.headers:  # the first attempt: the link drops after 40,000 bytes
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nETag: {etag}\r\n\r\n".encode())
            sock.sendall(data[:40_000])
            return False
        assert request.headers["range"] == "bytes=40000-" and request.headers["if-range"] == etag
        rest = data[40_000:]
        sock.sendall(
            f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(rest)}\r\nETag: {etag}\r\n"
            f"Content-Range: bytes 40000-{len(data) - 1}/{len(data)}\r\n\r\n".encode()
            + rest
        )
        return True

    said: list[str] = []
    with scripted_http(answer) as server:
        dest = str(tmp_path / "stage3.cpio.gz")
        url = server.url + "/stage3.cpio.gz"
        fetch(url, dest, hashlib.sha256(data).hexdigest(), attempts=2, sleep=lambda s: None, log=said.append)
    assert open(dest, "rb").read() == data
    assert len(said) == 1 and f"download {url} failed (the connection broke after 40000 of 100000 bytes" in said[0]


def test_a_redirect_is_not_followed_and_says_where_it_led(tmp_path):
    moved = b"HTTP/1.1 301 Moved\r\nLocation: http://elsewhere/x\r\nContent-Length: 0\r\n\r\n"
    with scripted_http(answering(moved)) as server:
        with pytest.raises(DownloadError, match="HTTP 301, a redirect to http://elsewhere/x"):
            fetch(server.url + "/x", str(tmp_path / "x"), None, attempts=1)


# --- properties -------------------------------------------------------------------------------------------

HEADS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 503\r\n",
        b"HTTP/1.1 abc OK\r\n",
        b"HTTP/9 200 OK\r\n",
        b"ICY 200 OK\r\n",
        b"",
    ]
)
HEADER_LINES = st.sampled_from(
    [
        b"Content-Length: 5\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"Content-Length: x\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"Retry-After: 3\r\n",
        b"X: \xff\xfe\r\n",
        b" folded\r\n",
        b"no colon\r\n",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n", b"5;x=1\r\nhel", b"ffffffffffffffff\r\n"]),
)


@pytest.fixture(scope="module")
def fuzzed():
    """One server for every example: it sends the example's bytes and closes."""
    state = {"answer": b""}

    def answer(sock, request):
        sock.sendall(state["answer"])
        return False

    with scripted_http(answer) as server:
        yield server, state


@given(
    head=HEADS,
    headers=st.lists(HEADER_LINES, max_size=4),
    end=st.sampled_from([b"\r\n", b"", b"\n"]),
    body=BODIES,
    raw=st.one_of(st.none(), st.binary(max_size=200)),
)
def test_any_answer_is_a_response_or_an_http_error(fuzzed, head, headers, end, body, raw):
    server, state = fuzzed
    state["answer"] = raw if raw is not None else head + b"".join(headers) + end + body
    connection = Connection(2)
    try:
        response = connection.request("GET", server.url + "/x", limit=1 << 16)
    except HttpError as exc:
        assert str(exc).startswith(server.url + "/x: ")
    else:
        assert isinstance(response.status, int) and isinstance(response.body, bytes)
        assert len(response.body) <= 1 << 16
    finally:
        connection.close()


@given(st.text(max_size=40))
def test_a_busy_masters_wait_is_a_delay_of_at_most_a_minute(value):
    assert 0 <= busy_wait(value) <= 60


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_in_seconds_is_taken_as_given_up_to_a_minute(seconds):
    assert busy_wait(str(seconds)) == min(60, seconds)


@given(st.text(max_size=60))
def test_split_url_gives_a_target_or_an_http_error(url):
    try:
        host, port, target = split_url(url)
    except HttpError:
        return
    assert host and 0 <= port < 65536 and target.startswith("/")
