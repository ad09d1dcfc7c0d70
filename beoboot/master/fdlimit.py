"""beoserv's open-files budget: what max_nodes and max_transfers cost in descriptors, and the limit that
must hold them.

Every connection and every file being sent is a descriptor, and a process past its RLIMIT_NOFILE gets
EMFILE from accept() and open() alike: nodes then see refused connects and failed downloads. The soft
limit most shells and services start with (1024) holds a few hundred nodes; the hard limit is what an
unprivileged process may raise it to, and systemd's default (524288) holds any cluster. So beoserv raises
its soft limit to the hard one at start, and refuses to start when even that cannot hold the nodes it is
configured for, naming the limit and what it holds, instead of failing on the nodes later.
"""

from __future__ import annotations

import resource

from beoboot.errors import BeobootError

# an idle node holds two connections: the kept-alive one for its heartbeats, events and log lines, and its
# job link (stage 2 holds its download's instead of the link); and a node may have one request waiting for a
# transfer slot (beoboot.master.transfers queues one per node)
FDS_PER_NODE = 3
# a transfer (a boot file or a libcache object) holds its connection and the file it sends
FDS_PER_TRANSFER = 2
# the rest: standard streams, the listening sockets, epoll, the signal pipe, two SQLite connections (the
# database, its WAL and shared memory each), the hosts file being rewritten, bpsh sessions (a socket and
# three terminals each), the describer's threads reading job files, and connections accepted in one burst
# (the listen backlog, 128) before they are answered
RESERVE = 256
NR_OPEN = "/proc/sys/fs/nr_open"  # the kernel's ceiling for RLIMIT_NOFILE when the hard limit is "unlimited"


def needed(max_nodes: int, max_transfers: int) -> int:
    """Descriptors beoserv needs for `max_nodes` idle nodes and `max_transfers` transfers under way."""
    return RESERVE + FDS_PER_NODE * max_nodes + FDS_PER_TRANSFER * max_transfers


def nodes_held(limit: int, max_transfers: int) -> int:
    """How many nodes an open-files limit of `limit` holds beside the transfers (the inverse of needed())."""
    return max(0, (limit - needed(0, max_transfers)) // FDS_PER_NODE)


def _ceiling(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default nr_open


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; (soft before, soft now)."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if before != target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return before, target


def ensure(max_nodes: int, max_transfers: int) -> tuple[int, int, int]:
    """Raise the soft limit to the hard one and check that it holds the configured nodes and transfers;
    BeobootError naming the limit and what it holds if it does not. (soft before, soft now, needed)."""
    before, limit = raise_soft_limit()
    need = needed(max_nodes, max_transfers)
    if limit < need:
        raise BeobootError(
            f"the hard open-files limit (RLIMIT_NOFILE) is {limit}: it holds {nodes_held(limit, max_transfers)} "
            f"nodes beside max_transfers = {max_transfers}, fewer than max_nodes = {max_nodes}, which needs {need}",
            hint=f"raise it to at least {need}: LimitNOFILE={need} in beoserv's systemd unit, or `ulimit -Hn {need}` "
            "as root before starting beoserv; or lower max_nodes or max_transfers in the --config file",
        )
    return before, limit, need
