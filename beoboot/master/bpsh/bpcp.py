"""`bpcp SOURCE... DEST`: copy files between the master and a node's environment root, as Scyld's bpcp did."""

# An operand is a path on the master, or NODESET:PATH on nodes (`3:/tmp/in`, `n3:/tmp/in`, `.3:/tmp/in`,
# `n[0-7]:/tmp/in`, `@up:/tmp/in`), in the environment root where their jobs see it. Files go from the
# master to a node set (every node gets the same bytes: the job's stdin goes to each), or from one node to
# the master. Each copy is a bpsh job of the master's own `dd` (cached on the node like any job's program): the
# file is the job's stdin going to a node, its stdout coming back. So bpcp needs nothing on the node that a
# job does not bring, and copies as the user who runs it: beoserv takes the user from the socket, and the
# node checks permissions as for any job of theirs.
#
# Nothing is left half-written: a copy goes to a temporary name beside the destination and is renamed into
# place only once it is complete (on a node, by a second job: `mv`).

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from beoboot.master import nodeset
from beoboot.master.bpsh.client import DEFAULT_SOCKET, SOCKET_ENV, BpshOptions, Client

DD = ("dd", "bs=1M", "status=none")


class BpcpError(Exception):
    pass


def parse_operand(text: str) -> tuple[str | None, str]:
    """'3:/tmp/x' -> ('3', '/tmp/x'), 'n[0-3]:/x' -> ('n[0-3]', '/x'): a node set, then a colon (node sets
    hold no colon); a path on the master -> (None, path). What stands before the colon is a node set when
    it reads as one (beoserv resolves its groups); `./a:b` or `notes:x` is a file here."""
    nodes, colon, path = text.partition(":")
    if not colon or "/" in nodes or not is_node_set(nodes):
        return None, text
    if not path.startswith("/"):
        raise BpcpError(f"{text}: a node's path must be absolute (a node has no working directory of yours)")
    return nodes, path


def is_node_set(text: str) -> bool:
    """Whether `text` reads as a node set, whatever its groups turn out to hold."""
    try:
        nodeset.parse(text, resolve=lambda name: ())
    except nodeset.NodeSetError:
        return False
    return True


def one_node(text: str) -> str:
    """A copy to the master comes from one node: `text` must name exactly one, without a group."""
    try:
        numbers = nodeset.parse(text)
    except nodeset.NodeSetError as exc:
        raise BpcpError(f"{exc}: a copy to the master comes from one node, named (n3)") from None
    if len(numbers) != 1:
        raise BpcpError(f"{text!r} names {len(numbers)} nodes: a copy to the master comes from one (n3)")
    return str(numbers[0])


def to_node(socket: str, source: str, node: str, destination: str) -> None:
    """Copy the master's file `source` to `destination` on `node`: dd into a temporary name, then mv."""
    temporary = f"{destination}.bpcp-{os.getpid()}"
    try:
        source_fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        raise BpcpError(f"{source}: {exc.strerror}") from None
    try:
        if os.path.isdir(source):
            raise BpcpError(f"{source}: a directory (bpcp copies files)")
        status = _job(socket, node, [*DD, f"of={temporary}"], stdin=source_fd)
    finally:
        os.close(source_fd)
    if status != 0:
        _job(socket, node, ["rm", "-f", temporary])
        raise BpcpError(f"copying {source} to node {node}:{destination} failed (dd exited {status})")
    status = _job(socket, node, ["mv", "-f", temporary, destination])
    if status != 0:
        _job(socket, node, ["rm", "-f", temporary])
        raise BpcpError(f"node {node}: putting {destination} in place failed (mv exited {status})")


def from_node(socket: str, node: str, source: str, destination: str) -> None:
    """Copy `source` on `node` to the master's `destination`, through a temporary file beside it."""
    directory = os.path.dirname(os.path.abspath(destination))
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.bpcp-", dir=directory)
    except OSError as exc:
        raise BpcpError(f"{destination}: cannot write in {directory}: {exc.strerror}") from None
    try:
        status = _job(socket, node, [*DD, f"if={source}"], stdout=fd)
        if status != 0:
            raise BpcpError(f"copying node {node}:{source} to {destination} failed (dd exited {status})")
        os.fchmod(fd, 0o666 & ~_umask())
        os.rename(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise
    finally:
        os.close(fd)


def _job(socket: str, node: str, argv: list[str], *, stdin: int | None = None, stdout: int = 1) -> int:
    options = BpshOptions(socket, node, argv, no_stdin=stdin is None)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        return Client(options, fds=(null if stdin is None else stdin, stdout, 2)).run(signals=True)
    finally:
        os.close(null)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy(socket: str, sources: list[str], destination: str) -> None:
    """Every source to the destination: the master's files to one node, or one node's file to the master."""
    parsed = [parse_operand(source) for source in sources]
    to, path = parse_operand(destination)
    remote = {node for node, _ in parsed if node is not None}
    if to is not None and not remote:  # the master's files to a node
        into_directory = len(sources) > 1 or path.endswith("/")
        for _, source in parsed:
            target = path.rstrip("/") + "/" + os.path.basename(source) if into_directory else path
            to_node(socket, source, to, target)
    elif to is None and len(parsed) == 1 and remote:  # a node's file to the master
        ((node, source),) = parsed
        assert node is not None  # `remote`: every source named a node
        node = one_node(node)
        target = os.path.join(path, os.path.basename(source)) if os.path.isdir(path) else path
        from_node(socket, node, source, target)
    elif to is None and not remote:
        raise BpcpError("no node named: one side is NODE:PATH (cp copies on the master)")
    else:
        raise BpcpError("copy the master's files to one node, or one file from a node to the master")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bpcp",
        description="Copy files between the master and a node's environment root.",
        usage="bpcp [--socket PATH] SOURCE... NODESET:PATH\n       bpcp [--socket PATH] NODE:PATH DEST",
        epilog="NODESET:PATH names a file on nodes (0:/tmp/in, n3:/tmp/in, n[0-7]:/tmp/in, @up:/tmp/in); "
        "other paths are the master's. A copy to the master comes from one node.",
    )
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET, help="beoserv's bpsh socket")
    parser.add_argument("operands", nargs="+", metavar="OPERAND", help="the sources, then the destination")
    args = parser.parse_args(argv)
    if len(args.operands) < 2:
        parser.error("name a SOURCE and a DEST")
    try:
        copy(args.socket, args.operands[:-1], args.operands[-1])
    except BpcpError as exc:
        print(f"bpcp: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
