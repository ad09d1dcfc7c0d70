"""The node's names: /etc/hostname, /etc/hosts and /etc/resolv.conf in stage 3's root and in the environment
root jobs see.

Jobs resolve names from files first, then DNS (the environment root's nsswitch.conf), so these files are how a job
finds its own host (Java's getLocalHost, MPI start-up), the master (`master`, Scyld's `.-1`) and the other
nodes (`n3`, `.3`, from the master's host table). They are kept true while the node runs: the table
changes when nodes register, and without an address plan the node's own address changes when a new DHCP
lease moves it. Other names (a licence server, a file server) go to the name servers of resolv.conf: the
master's config's (dns_servers, dns_search), else the DHCP lease's.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from urllib.parse import urlsplit

from agent import protocol as p
from stage3.rootpaths import replace_file

NAME_FILES = ("etc/hostname", "etc/hosts")  # under each root
RESOLV_CONF = "etc/resolv.conf"  # under each root too
# glibc's resolver: a name server that does not answer is given up on after 2 s, twice, not 5 s
RESOLVER_OPTIONS = "options timeout:2 attempts:2"


def resolv_conf(reply: p.RegisterReply, lease_dns: tuple[str, ...] | list[str] = ()) -> str:
    """/etc/resolv.conf: the master's name servers and search domains, else the DHCP lease's servers."""
    servers, origin = reply.dns_servers, "the master's config (dns_servers)"
    if not servers:
        servers, origin = tuple(lease_dns), "the DHCP lease"
    lines = [f"# written by beoboot from {origin}" if servers else "# no name servers: names resolve from /etc/hosts"]
    if reply.dns_search:
        lines.append("search " + " ".join(reply.dns_search))
    lines += [f"nameserver {server}" for server in servers[:3]]  # glibc reads three (MAXNS)
    lines.append(RESOLVER_OPTIONS)
    return "\n".join(lines) + "\n"


def hosts_file(reply: p.RegisterReply, address: str, master_url: str) -> str:
    """/etc/hosts: this node by its names (BeoNSS: nN and .N, and `self` and `.-2` for the machine asking),
    and the master as `master`, `master0` and `.-1` (Scyld's names for it) when its URL names it by address."""
    lines = ["127.0.0.1 localhost", f"{address.split('/')[0]} {reply.hostname} {reply.name} self .-2"]
    master_host = urlsplit(master_url).hostname or ""
    try:
        ipaddress.ip_address(master_host)
        own_name = reply.master_hostname if is_host_name(reply.master_hostname) else ""
        lines.append(f"{master_host} master master0 .-1" + (f" {own_name}" if own_name else ""))
    except ValueError:
        pass  # a name: resolving it needs DNS, which resolv.conf from DHCP provides
    return "\n".join(lines) + "\n"


def is_host_name(name: str) -> bool:
    """A name /etc/hosts may hold (RFC 1123 letters, digits, '-' and '.'), and none of the names the file
    gives already (a master called `master` or `localhost` adds nothing)."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
    return 0 < len(name) <= 253 and set(name) <= allowed and name not in ("localhost", "master", "master0", "self")


def set_identity(reply: p.RegisterReply, address: str, master_url: str, *, root: str = "/", dry_run: bool) -> None:
    """/etc/hostname and /etc/hosts under `root`, and for "/" the hostname itself."""
    if not dry_run and root == "/":
        socket.sethostname(reply.hostname)
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    hostname, hosts = NAME_FILES
    _replace(os.path.join(root, hostname), reply.hostname + "\n")
    _replace(os.path.join(root, hosts), hosts_file(reply, address, master_url))


def write_env_hosts(own: str, table: str, root: str) -> None:
    """The environment root's /etc/hosts: this node and the master (hosts_file), then the other nodes of
    the cluster's host table, so that a job reaches another node by name (MPI: n3, .3)."""
    own_names = {name for line in own.splitlines() for name in line.split()[1:]}
    others = [line for line in table.splitlines() if len(line.split()) > 1 and line.split()[1] not in own_names]
    _replace(os.path.join(root, NAME_FILES[1]), own + "".join(line + "\n" for line in others))


def _replace(path: str, text: str) -> None:
    """Replaced by rename: a job resolving a name meanwhile reads the old file or the new one."""
    replace_file(path, text)


class NodeNames:
    """The name files of both roots, rewritten when the host table or the node's address changes; the
    heartbeat thread brings tables and the lease keeper's thread brings moves, hence the lock."""

    def __init__(
        self, reply: p.RegisterReply, address: str, master_url: str, env_root: str, *, dry_run: bool, root: str = "/"
    ) -> None:
        self.reply = reply
        self.address = address
        self.master_url = master_url
        self.env_root = env_root
        self.root = root  # stage 3's own; another in tests
        self.dry_run = dry_run
        self.resolv = ""  # resolv.conf's text (resolv_conf); "": not written
        self.table = ""
        self._lock = threading.Lock()

    def write_root(self) -> None:
        """Stage 3's own root, and the hostname."""
        with self._lock:
            set_identity(self.reply, self.address, self.master_url, root=self.root, dry_run=self.dry_run)
            self._write_resolv(self.root)

    def write_env_root(self) -> None:
        with self._lock:
            self._write_env_root()

    def take_table(self, table: str) -> None:
        with self._lock:
            self.table = table
            self._write_env_root()

    def move(self, address: str) -> bool:
        """The DHCP lease moved the node to `address`. With an address plan the node's names stay on its
        permanent address, which the move kept; without one they follow. True when they did."""
        if self.reply.address:
            return False
        with self._lock:
            self.address = address
            set_identity(self.reply, address, self.master_url, root=self.root, dry_run=self.dry_run)
            self._write_env_root()
        return True

    def _write_resolv(self, root: str) -> None:
        if self.resolv:
            _replace(os.path.join(root, RESOLV_CONF), self.resolv)

    def _write_env_root(self) -> None:
        set_identity(self.reply, self.address, self.master_url, root=self.env_root, dry_run=self.dry_run)
        self._write_resolv(self.env_root)
        if self.table:
            write_env_hosts(hosts_file(self.reply, self.address, self.master_url), self.table, self.env_root)
