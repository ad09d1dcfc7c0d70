"""`bpctl -S NODES -s reboot|halt|pwroff`: reboot, halt or power off nodes, as Scyld's bpctl did."""

# Each node ends its jobs as a shutdown would (SIGTERM, then SIGKILL for what is left after --grace
# seconds, so their bpsh sessions get their exit statuses), stops its heartbeats, closes its job link, and
# then asks its kernel. bpctl returns when every node has closed its link; the master marks them down and
# records the order in each node's boot timeline (`bpstat --timeline N`). A rebooted node boots from the
# network again and keeps its number.
#
# Only root may do this: beoserv takes the user from its local socket (SO_PEERCRED), as for bpsh, so the
# order cannot come from a node or from another user on the master.
#
# Wire format (one SEQPACKET record each way, on bpsh's socket, with stdin, stdout and stderr as for bpsh):
# NUL-separated REQUEST_MAGIC, nodes, action, grace seconds, and the node set to leave out (-x; an
# older bpctl sends none). The node sets go as typed: beoserv resolves them (beoboot.master.selection). beoserv writes one line per node that failed
# to the client's stderr and answers b"X" + status: 0 when every node acted, 1 otherwise.

from __future__ import annotations

import argparse
import os
import socket
import sys

from agent.protocol import PowerAction
from beoboot.master.bpsh.client import DEFAULT_SOCKET, SOCKET_ENV

REQUEST_MAGIC = b"bpctl1"
DEFAULT_GRACE = 10.0
# Scyld's state names, and the ones systemctl users type
STATES = {
    "reboot": PowerAction.REBOOT,
    "halt": PowerAction.HALT,
    "pwroff": PowerAction.POWEROFF,
    "poweroff": PowerAction.POWEROFF,
}
USAGE_STATUS, FAILED_STATUS = 2, 1


class ControlRequestError(Exception):
    pass


def encode_request(nodes: str, action: PowerAction, grace: float, exclude: str = "") -> bytes:
    fields = [REQUEST_MAGIC, nodes.encode(), action.value.encode(), repr(float(grace)).encode(), exclude.encode()]
    return b"\0".join(fields)


def decode_request(data: bytes) -> tuple[str, PowerAction, float, str]:
    """A bpctl record -> (nodes, action, grace, exclude)."""
    fields = data.split(b"\0")
    if len(fields) not in (4, 5) or fields[0] != REQUEST_MAGIC:
        raise ControlRequestError("not a bpctl request (another version of bpctl?)")
    try:
        nodes, action, grace = fields[1].decode(), PowerAction(fields[2].decode()), float(fields[3])
        exclude = fields[4].decode() if len(fields) == 5 else ""
    except ValueError:
        raise ControlRequestError("a malformed bpctl request") from None
    return nodes, action, check_grace(grace), exclude


def check_grace(grace: float) -> float:
    if not 0 <= grace <= 3600:
        raise ControlRequestError(f"--grace {grace:g}: give 0 to 3600 seconds")
    return grace


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpctl", description=__doc__.split("\n")[0].strip("`"))
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "-S",
        "--node",
        metavar="NODESET",
        help="n3, .3 or 3; ranges 0-99 or n[0-99,120]; @up, @all, @GROUP (beoserv's [groups]); a,b a!b a&b",
    )
    which.add_argument("-a", "--all", action="store_true", help="every node that is up (as -S @up)")
    parser.add_argument(
        "-x", "--exclude", action="append", default=[], metavar="NODESET", help="not these nodes (may be repeated)"
    )
    parser.add_argument(
        "-s",
        "--state",
        required=True,
        choices=sorted(STATES),
        help="reboot (boots again from the network), halt, or pwroff (power off)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="how long jobs have between SIGTERM and SIGKILL (default %(default)g)",
    )
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET, help="beoserv's bpsh socket")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_grace(args.grace)
    except ControlRequestError as exc:
        print(f"bpctl: {exc}", file=sys.stderr)
        return USAGE_STATUS
    request = encode_request("@up" if args.all else args.node, STATES[args.state], args.grace, ",".join(args.exclude))
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        try:
            conn.connect(args.socket)
        except OSError as exc:
            print(
                f"bpctl: cannot reach beoserv at {args.socket}: {exc.strerror}; is beoserv running? "
                f"(--socket or ${SOCKET_ENV} for another one)",
                file=sys.stderr,
            )
            return FAILED_STATUS
        socket.send_fds(conn, [request], [0, 1, 2])
        answer = conn.recv(64)
    if not answer.startswith(b"X"):
        print("bpctl: beoserv went away before the nodes answered", file=sys.stderr)
        return FAILED_STATUS
    return int(answer[1:])


if __name__ == "__main__":
    sys.exit(main())
