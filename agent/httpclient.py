"""The agent's HTTP client: HTTP/1.1 on the standard library's http.client, so no node image carries
`requests`. A `Connection` is one kept-alive connection to the master, opened again when the master has
closed it; a `Pool` lends a few of them to threads that fetch in parallel. Every failure, from a refused
connect to a malformed or cut-off answer, is an `HttpError` that names the URL and says what to do.

Nothing here logs: agent.masterlink ships log records over these very connections.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

from agent import __version__
from agent.errors import AgentError

CHUNK = 1 << 20
MAX_BODY = 16 << 20  # an answer read whole into memory (Response.read): the largest message of the protocol
ERROR_TEXT = 4096  # bytes of an error's body kept for its message
RETRY_AFTER_MAX = 60.0  # seconds: the longest wait a busy master's Retry-After gets
USER_AGENT = f"beoboot-agent/{__version__}"

UNREACHABLE = "check that the master is up and that this node reaches it (beoboot.master, the cluster network)"
BROKEN = "the master restarted or the network dropped: if it lasts, see beoserv's log and the cluster network"
STALLED = "the master is overloaded or stuck: see its log (beoserv)"
NOT_HTTP = "something other than the master answers at that address: check beoboot.master"


class HttpError(AgentError):
    """The server could not be reached, or did not give a whole, well-formed answer. `errno`: that of a
    failed connect (or bind of the source port asked for), None for any other failure."""

    def __init__(self, message: str, hint: str | None = None, *, errno: int | None = None) -> None:
        super().__init__(message, hint)
        self.errno = errno


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After (RFC 9110 10.2.3), seconds or an HTTP date, as seconds to wait from now, at most
    RETRY_AFTER_MAX; None when there is none or it is neither form."""
    text = (value or "").strip()
    if text.isascii() and text.isdigit():
        return min(float(text[:12]) if len(text) <= 12 else RETRY_AFTER_MAX, RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # not an HTTP date, which is in GMT
        return None
    return min(max(0.0, when.timestamp() - now()), RETRY_AFTER_MAX)


def split_url(url: str) -> tuple[str, int, str]:
    """'http://10.0.2.2:8080/a?b=1' -> ('10.0.2.2', 8080, '/a?b=1'); HttpError for anything but http://."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80  # a port out of range or not a number: ValueError
    except ValueError as exc:
        raise HttpError(f"{url!r} is not a usable URL: {exc}", hint="check beoboot.master") from None
    if parts.scheme != "http" or not parts.hostname:
        # plain HTTP on the cluster network: the files are pinned by their sha256, not by TLS
        raise HttpError(f"{url!r} is not an http:// URL", hint="the agent speaks plain HTTP: check beoboot.master")
    return parts.hostname, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def failure(exc: OSError | http.client.HTTPException | ValueError, url: str, timeout: float) -> HttpError:
    """What http.client or the socket raised during an exchange, as an HttpError saying what happened."""
    if isinstance(exc, TimeoutError):  # socket.timeout, the per-read timeout
        return HttpError(f"{url}: the master sent nothing for {timeout:g}s", hint=STALLED)
    if isinstance(exc, http.client.RemoteDisconnected):  # before OSError: it is a ConnectionResetError too
        return HttpError(f"{url}: the master closed the connection without answering", hint=BROKEN)
    if isinstance(exc, http.client.IncompleteRead):
        return HttpError(f"{url}: the connection broke in the middle of the answer", hint=BROKEN)
    if isinstance(exc, http.client.LineTooLong):
        return HttpError(f"{url}: not an HTTP answer ({exc})", hint=NOT_HTTP)
    if isinstance(exc, (http.client.BadStatusLine, http.client.UnknownProtocol)):
        return HttpError(f"{url}: not an HTTP answer: {str(exc)[:80]!r}", hint=NOT_HTTP)
    if isinstance(exc, (http.client.InvalidURL, ValueError)):
        # http.client refuses a control character in the path or in a header (a token from a bad master)
        return HttpError(f"{url}: cannot send the request: {exc}")
    if isinstance(exc, http.client.HTTPException):  # more than 100 header lines, and the like
        return HttpError(f"{url}: a bad HTTP answer ({type(exc).__name__}: {exc})", hint=NOT_HTTP)
    return HttpError(f"{url}: the connection broke: {exc.strerror or exc}", hint=BROKEN)


EXCHANGE_ERRORS = (OSError, http.client.HTTPException, ValueError)


class _HTTPResponse(http.client.HTTPResponse):
    def _read_next_chunk_size(self) -> int:
        # http.client takes a negative chunk size ("-5") as one, and then reads to the end of the
        # connection, unbounded: it is a malformed chunk (its callers turn ValueError into IncompleteRead)
        size: int = super()._read_next_chunk_size()  # type: ignore[misc]  # not in typeshed
        if size < 0:
            raise ValueError(f"negative chunk size {size}")
        return size


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection is unusable: readable while no request is out means the
    server closed it (its keep-alive timeout, a restart) or sent something unasked. Asked before each
    reuse, so the request goes on a new connection instead of failing on the dead one."""
    poller = select.poll()  # not select(): a descriptor above 1023 is fine
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Response:
    """An answer: status and head at once, the body read once, whole (read) or in chunks (chunks)."""

    def __init__(self, url: str, raw: http.client.HTTPResponse, connection: Connection) -> None:
        self.url = url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        self.body: bytes | None = None  # what read() or text() read
        self._raw = raw
        self._connection = connection

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def complete(self) -> bool:
        """Whether the body was read to its end (the connection is then free for the next request)."""
        return self._raw.isclosed()

    def abandon(self) -> None:
        """Close the connection in the middle of this answer (the rest of it would come first on it)."""
        self._raw.close()  # http.client hands the socket to an answer that ends the connection: closed here
        self._connection.close()

    def chunks(self, size: int = CHUNK, limit: int | None = None) -> Iterator[bytes]:
        """The body, `size` bytes at a time; HttpError when the connection breaks before its
        Content-Length is complete, or when the body is longer than `limit`."""
        expected = self._raw.length  # None: chunked, or until the server closes (then the end is the end)
        if limit is not None and expected is not None and expected > limit:
            self.abandon()
            raise HttpError(f"{self.url}: the answer has {expected} bytes, more than the {limit} expected")
        got = 0
        while True:
            try:
                chunk = self._raw.read(size)
            except EXCHANGE_ERRORS as exc:
                self.abandon()
                raise failure(exc, self.url, self._connection.timeout) from None
            if not chunk:
                break
            got += len(chunk)
            if limit is not None and got > limit:
                self.abandon()
                raise HttpError(f"{self.url}: the answer has more than the {limit} bytes expected")
            yield chunk
        if expected is not None and got < expected:
            # http.client's read(size) returns b"" at a closed connection, whatever Content-Length said
            self.abandon()
            raise HttpError(f"{self.url}: the connection broke after {got} of {expected} bytes", hint=BROKEN)

    def read(self, limit: int = MAX_BODY) -> bytes:
        if self.body is None:
            self.body = b"".join(self.chunks(limit=limit))
        return self.body

    def text(self, limit: int = ERROR_TEXT) -> str:
        """The body as text: all read() read, else its first `limit` bytes (an error's explanation; the
        rest is not waited for)."""
        if self.body is None:
            kept = b""
            for chunk in self.chunks(size=limit):
                kept += chunk
                if len(kept) >= limit:
                    break
            self.body = kept[:limit]
        return self.body.decode("utf-8", errors="replace")


class Connection:
    """A kept-alive HTTP/1.1 connection, opened at the first request to a server and again whenever that
    server has closed it (or a request is for another one). One request at a time: a caller that shares
    one between threads holds a lock around each. `timeout` bounds the connect, and every wait for the
    server's next bytes (not the whole transfer: a large file may take longer). `source_port`: the local
    port to send from (a reserved one, for registration); `reset_on_close`: end with a reset, so that
    port is not left in TIME_WAIT."""

    def __init__(self, timeout: float, *, source_port: int | None = None, reset_on_close: bool = False) -> None:
        self.timeout = timeout
        self.source_port = source_port
        self.reset_on_close = reset_on_close
        self._http: http.client.HTTPConnection | None = None
        self._server: tuple[str, int] | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _ready(self, url: str, host: str, port: int) -> http.client.HTTPConnection:
        """The open connection to host:port, or a new one."""
        current = self._http
        if current is not None and current.sock is not None and self._server == (host, port):
            if not _dropped(current.sock):
                return current
        self.close()
        source = ("", self.source_port) if self.source_port is not None else None
        try:
            sock = socket.create_connection((host, port), self.timeout, source_address=source)
        except socket.gaierror as exc:
            raise HttpError(f"{url}: cannot resolve {host}: {exc.strerror}", hint=UNREACHABLE) from None
        except TimeoutError:
            raise HttpError(f"{url}: cannot connect: no answer within {self.timeout:g}s", hint=UNREACHABLE) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise HttpError(f"{url}: cannot connect: {reason}", hint=UNREACHABLE, errno=exc.errno) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a small request leaves at once
            if self.reset_on_close:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as exc:
            sock.close()
            raise HttpError(f"{url}: cannot set up the connection: {exc.strerror or exc}") from None
        connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        connection.auto_open = 0  # never a connect of its own, which would bind no source port
        connection.response_class = _HTTPResponse
        connection.sock = sock
        self._http, self._server = connection, (host, port)
        return connection

    def open(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send the request and read the answer's head; the caller reads the body or closes the connection
        (stream() does either)."""
        host, port, target = split_url(url)
        connection = self._ready(url, host, port)
        try:
            try:
                connection.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
            except BrokenPipeError:
                pass  # the server answered and closed before the whole request was sent: its answer says why
            raw = connection.getresponse()
        except BaseException as exc:
            self.close()
            if isinstance(exc, EXCHANGE_ERRORS):
                raise failure(exc, url, self.timeout) from None
            raise
        return Response(url, raw, self)

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Iterator[Response]:
        """open(), for a body read in chunks; a body left unread closes the connection (it is mid-answer)."""
        response = self.open(method, url, body=body, headers=headers)
        try:
            yield response
        finally:
            if not response.complete:
                response.abandon()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_BODY,
    ) -> Response:
        """One request with its whole answer read (Response.body), at most `limit` bytes of it."""
        with self.stream(method, url, body=body, headers=headers) as response:
            response.read(limit)
        return response


class Pool:
    """Connections for threads that fetch in parallel (the libcache's workers): each request takes an idle
    one or a new one, and gives it back after; at most `keep` stay idle."""

    def __init__(self, timeout: float, keep: int) -> None:
        self.timeout = timeout
        self.keep = keep
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Iterator[Response]:
        with self._lock:
            connection = self._idle.pop() if self._idle else Connection(self.timeout)
        try:
            with connection.stream(method, url, body=body, headers=headers) as response:
                yield response
        finally:
            with self._lock:  # a closed one is given back too: it opens again when next used
                kept = len(self._idle) < self.keep
                if kept:
                    self._idle.append(connection)
            if not kept:
                connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
