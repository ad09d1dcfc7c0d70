"""Which registrations beoserv accepts: only a booted node's, or root's on the master."""

# A registration earns a link token, and with it the node's jobs (manifests, other users' files, their
# stdin). What the master can check of the machine at the other end is what the kernel says of the
# connection, so:
#
# - a process on the master itself (simulated nodes; QEMU's user-mode network, whose slirp connects from
#   127.0.0.1) is accepted only if root owns its socket (beoboot.master.peers); config `local_nodes = "none"`
#   refuses them all, for a production master;
# - another host must send from a privileged port (< 1024), as rsh and NFS's `secure` export asked: on a
#   booted node only root binds one, so a user's job cannot register a fake node, or take over its own
#   node's registration. Config `require_reserved_port = false` lifts this for a site whose nodes reach the
#   master through NAT, which rewrites source ports.
#
# A refusal is logged once per peer address per REFUSAL_LOG_INTERVAL, however often that peer retries.

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from beoboot.master import peers
from beoboot.master.config import MasterConfig

log = logging.getLogger("beoserv")

REFUSAL_LOG_INTERVAL = 60.0
MAX_REMEMBERED_PEERS = 4096  # refused peers whose last log time is kept, so the table stays bounded


class RegistrationRefused(Exception):
    """Why a registration is not accepted: the message is what the peer is told (403) and the log says."""


def check(
    peer: peers.Endpoint,
    ours: peers.Endpoint,
    policy: MasterConfig,
    owner: Callable[[peers.Endpoint, peers.Endpoint], int | None] = peers.socket_owner,
) -> None:
    """Raise RegistrationRefused unless the config `policy` (its local_nodes and require_reserved_port)
    accepts a registration from `peer` on our end `ours` of the connection."""
    host, port = peer
    try:
        uid = owner(peer, ours)
    except (peers.PeerLookupError, ValueError) as exc:
        raise RegistrationRefused(f"cannot tell who sent it from {host}:{port}: {exc}") from None
    if uid is not None or peers.is_loopback(host):
        if policy.local_nodes == "none":
            raise RegistrationRefused(
                f"registration from {host}:{port}, a process on the master itself: this master takes none "
                '(local_nodes = "none")'
            )
        if uid is None:  # a loopback address not in our socket table: nothing vouches for it
            raise RegistrationRefused(f"registration from {host}:{port}: no socket of this host sent it")
        if uid != 0:
            raise RegistrationRefused(
                f"registration from {host}:{port}, a socket of uid {uid} on the master: only root's processes "
                "on the master may register nodes"
            )
        return
    if policy.require_reserved_port and port >= peers.RESERVED_PORTS:
        raise RegistrationRefused(
            f"registration from {host}:{port}: source port {port} is not privileged (< {peers.RESERVED_PORTS}), "
            "so it need not be a node's root (require_reserved_port = true)"
        )


@dataclass
class RefusalLog:
    """Logs each refused peer address once per `interval`, with how many more it sent meanwhile."""

    interval: float = REFUSAL_LOG_INTERVAL
    clock: Callable[[], float] = time.monotonic
    _peers: dict[str, tuple[float, int]] = field(default_factory=dict)  # host -> (logged at, refused since)

    def refused(self, host: str, why: str) -> bool:
        """Record a refusal; True if it was logged."""
        now = self.clock()
        logged_at, since = self._peers.get(host, (None, 0))
        if logged_at is not None and now - logged_at < self.interval:
            self._peers[host] = (logged_at, since + 1)
            return False
        if len(self._peers) >= MAX_REMEMBERED_PEERS:
            self._peers = {h: v for h, v in self._peers.items() if now - v[0] < self.interval}
            if len(self._peers) >= MAX_REMEMBERED_PEERS:  # that many within one interval: forget them all
                self._peers.clear()
        self._peers[host] = (now, 0)
        more = f" ({since} more from {host} refused since it was last logged)" if since else ""
        log.warning("registration refused: %s%s", why, more)
        return True
