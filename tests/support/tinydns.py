"""A DNS server of the tests' own, and a query to ask any server with: A records over UDP, nothing more.

    python tinydns.py serve ADDRESS PORT NAME=IPV4...   answers those names, NXDOMAIN to the rest
    python tinydns.py query ADDRESS PORT NAME           prints the addresses of the answer, or the rcode

It stands for the site's name servers (a licence server's name) on loopback or in a test's namespace, so
that no test asks the host's resolver, which would ask the outside world.
"""

from __future__ import annotations

import random
import socket
import struct
import sys

A, IN = 1, 1
NXDOMAIN = 3


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` (following compression pointers) and the offset past it."""
    labels, end = [], None
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            end = end or offset + 2
            offset = struct.unpack("!H", packet[offset : offset + 2])[0] & 0x3FFF
            continue
        if length == 0:
            return ".".join(labels), end or offset + 1
        labels.append(packet[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length


def query_packet(name: str, ident: int) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", A, IN)


def answers(packet: bytes) -> tuple[int, list[str]]:
    """(rcode, the A records' addresses) of a reply."""
    _, flags, questions, count = struct.unpack("!HHHH", packet[:8])
    offset = 12
    for _ in range(questions):
        offset = read_name(packet, offset)[1] + 4
    found = []
    for _ in range(count):
        offset = read_name(packet, offset)[1]
        kind, _, _, length = struct.unpack("!HHIH", packet[offset : offset + 10])
        offset += 10
        if kind == A and length == 4:
            found.append(socket.inet_ntoa(packet[offset : offset + 4]))
        offset += length
    return flags & 0xF, found


def ask(address: str, port: int, name: str, timeout: float = 3.0) -> tuple[int, list[str]]:
    ident = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query_packet(name, ident), (address, port))
        while True:
            reply, _ = sock.recvfrom(4096)
            if struct.unpack("!H", reply[:2])[0] == ident:
                return answers(reply)


def reply_to(query: bytes, records: dict[str, str]) -> bytes:
    ident, _, questions = struct.unpack("!HHH", query[:6])
    name, end = read_name(query, 12)
    question = query[12 : end + 4]
    address = records.get(name.lower())
    kind = struct.unpack("!H", query[end : end + 2])[0]
    if address is None:
        return struct.pack("!HHHHHH", ident, 0x8180 | NXDOMAIN, 1, 0, 0, 0) + question
    if kind != A:
        return struct.pack("!HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, A, IN, 60, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer


def serve(address: str, port: int, records: dict[str, str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        print(f"tinydns: serving {len(records)} names on {address}:{port}", flush=True)
        while True:
            query, peer = sock.recvfrom(4096)
            try:
                sock.sendto(reply_to(query, records), peer)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue  # not a query this server reads


if __name__ == "__main__":
    verb, host, port_text, *rest = sys.argv[1:]
    if verb == "serve":
        serve(host, int(port_text), {k.lower(): v for k, v in (item.split("=", 1) for item in rest)})
    else:
        rcode, found = ask(host, int(port_text), rest[0])
        print(" ".join(found) if found else f"rcode {rcode}")
