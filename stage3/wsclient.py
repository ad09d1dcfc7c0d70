"""A small WebSocket client (RFC 6455) on a plain socket: the node's job link and `bpsh` both use it.

Standard library only, so it runs in the node image and `bpsh` starts without importing requests. Client
frames are masked (RFC 6455 5.3); the master's are not. Pings are answered inside `recv`. Messages are
not fragmented when sent; fragmented ones are reassembled when received.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from urllib.parse import urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEADER = 65536


class WebSocketError(Exception):
    """The handshake was refused, or the connection broke or closed."""


def parse_http_url(url: str) -> tuple[str, int, str]:
    """'http://10.0.2.2:8080/api/v1/x?y=1' -> ('10.0.2.2', 8080, '/api/v1/x?y=1')."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws") or not parts.hostname:
        raise WebSocketError(f"not an http:// URL: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


def mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    # one big-integer XOR instead of a Python loop per byte: fast enough for 64 KiB output chunks
    keys = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(len(data), "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = os.urandom(4)
    return header + key + mask(payload, key)


class WebSocket:
    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buffer = bytearray(buffered)
        self._send_lock = threading.Lock()
        self.closed = False

    @classmethod
    def connect(cls, url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> WebSocket:
        """`headers` go with the handshake (the job link's token: a header, so that no error message or
        access log that prints the URL shows it)."""
        host, port, path = parse_http_url(url)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise WebSocketError(f"cannot connect to {host}:{port}: {exc}") from None
        # small control frames and a cached job's few bytes of output must not wait for Nagle
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
            + "\r\n"
        )
        try:
            sock.sendall(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk or len(head) > MAX_HEADER:
                    raise WebSocketError(f"{url}: connection closed during the handshake")
                head += chunk
        except OSError as exc:
            sock.close()
            raise WebSocketError(f"{url}: handshake failed: {exc}") from None
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            sock.close()
            body = rest.decode(errors="replace").strip()
            raise WebSocketError(f"{url}: refused: {lines[0]} {body}".strip())
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        answered = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if answered.get("sec-websocket-accept") != expected:
            sock.close()
            raise WebSocketError(f"{url}: bad Sec-WebSocket-Accept in the handshake")
        sock.settimeout(None)
        return cls(sock, rest)

    # --- sending (any thread) -------------------------------------------------------------------------

    def _send(self, opcode: int, payload: bytes) -> None:
        frame = encode_frame(opcode, payload)
        with self._send_lock:
            try:
                self.sock.sendall(frame)
            except OSError as exc:
                self.closed = True
                raise WebSocketError(f"send failed: {exc}") from None

    def send_text(self, text: str) -> None:
        self._send(OP_TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self._send(OP_BINARY, data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._send(OP_CLOSE, struct.pack("!H", 1000))
            except WebSocketError:
                pass
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # --- receiving (one thread) -----------------------------------------------------------------------

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            try:
                chunk = self.sock.recv(max(65536, count - len(self._buffer)))
            except OSError as exc:
                self.closed = True
                raise WebSocketError(f"receive failed: {exc}") from None
            if not chunk:
                self.closed = True
                raise WebSocketError("connection closed by the peer")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def pending(self) -> bool:
        """Whether a frame's bytes are already buffered (a select() on the socket would not show them)."""
        return bool(self._buffer)

    def recv(self) -> tuple[int, bytes]:
        """The next message: (OP_TEXT or OP_BINARY, payload). WebSocketError when the connection ends."""
        message_op, parts = None, []
        while True:
            first, second = self._read(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._read(8))
            key = self._read(4) if second & 0x80 else b""
            payload = self._read(length)
            if key:
                payload = mask(payload, key)
            if opcode == OP_PING:
                self._send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.close()
                raise WebSocketError("closed by the peer")
            if opcode != OP_CONT:
                message_op = opcode
            parts.append(payload)
            if first & 0x80:
                return message_op or OP_BINARY, b"".join(parts)
