"""beoserv's own config (TOML): a table of settings (beoboot.configfile), parsed into a frozen MasterConfig and
re-read on SIGHUP. `beoserv --help` lists every key with its default and what it is for.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import values
from beoboot.configfile import Refused, parse, parse_toml, read_toml, setting
from beoboot.errors import ConfigError
from beoboot.master import nodeset
from beoboot.master.mountspec import MountConfig, mounts_problem, toml_tables
from beoboot.master.selection import check_group_name

KEEP_BOOTS_MAX = 10000
HOSTNAME_PREFIX_MAX = 32  # a DNS label holds 63 characters: the prefix and the node number must fit
LOCAL_NODES = ("root", "none")
MAX_NODES_MAX = 1 << 20  # a million nodes: beyond any cluster one beoserv serves
MAX_TRANSFERS_MAX = 65536
MAX_GROUPS = 4096  # [groups] entries: racks, switches, partitions; not one per node
MAX_HOOK_WORDS = 256
MAX_DNS_SERVERS = 3  # glibc's resolver reads the first three nameserver lines (MAXNS)
MAX_DNS_SEARCH = 6
DOMAIN = r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*"


def _typed(*kinds: type, then: Callable[[Any], Any] = lambda value: value) -> Callable[[Any], Any]:
    """A value of one of the TOML types `kinds` (a bool is no int), then checked by `then`."""

    def check(value: Any) -> Any:
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise Refused("must be " + " or ".join(kind.__name__ for kind in kinds))
        return then(value)

    return check


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    # finite (NaN or infinity would stop a timer for ever), and checked before float(): 1e400 is no float
    return _typed(int, float, then=lambda value: values.number(value, low, high))


def _keep_boots(value: int) -> int:
    if value < 1:
        raise Refused("must be >= 1", hint="the current boot is kept")
    return values.whole(value, 1, KEEP_BOOTS_MAX, "a number of boots")


def _first_node_address(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise Refused("is not an IPv4 address", hint='write it like "10.54.0.10"') from None
    return value


def _hostname_prefix(value: str) -> str:
    # it begins every node's host name, in the hosts file and in DNS: ASCII letters only
    if not (value.isascii() and value.isalpha() and len(value) <= HOSTNAME_PREFIX_MAX):
        raise Refused(f"must be letters only (a-z, A-Z), at most {HOSTNAME_PREFIX_MAX}")
    return value


def _hosts_file(value: str) -> str:
    if value and not (
        values.one_line(value, "an absolute path").startswith("/") and os.path.isdir(os.path.dirname(value))
    ):
        raise Refused(
            "must be an absolute path in an existing directory",
            hint='"/etc/hosts" to resolve the nodes on the master, or "" for no file',
        )
    return value


def _local_nodes(value: str) -> str:
    if value not in LOCAL_NODES:
        raise Refused(
            "must be one of " + ", ".join(map(repr, LOCAL_NODES)),
            hint='"root": simulated nodes and QEMU test nodes run by root may register; "none": no process on the master may',
        )
    return value


def _groups(value: Any) -> tuple[tuple[str, str], ...]:
    """[groups]: NAME = "NODE SET" (n[0-31], 32-35,40). Only the shape here; the node sets are parsed in
    config_from_dict, with the file's hostname_prefix."""
    if not isinstance(value, dict) or not all(isinstance(text, str) for text in value.values()):
        raise Refused('must be a table of node sets, e.g. [groups] rack1 = "n[0-31]"')
    if len(value) > MAX_GROUPS:
        raise Refused(f"holds {len(value)} groups, more than {MAX_GROUPS}")
    for name in value:
        try:
            check_group_name(name)
        except ValueError as exc:
            raise Refused(f"has {name!r}, which {exc}") from None
    return tuple(sorted(value.items()))


def _argv(value: Any) -> tuple[str, ...]:
    """A hook's command: a program and its arguments, run without a shell."""
    if not isinstance(value, list) or not all(isinstance(word, str) and "\0" not in word for word in value):
        raise Refused("must be a list of strings, a program and its arguments", hint='["/usr/local/sbin/node-up"]')
    if value and not value[0] or len(value) > MAX_HOOK_WORDS:
        raise Refused(f"must name a program first, and hold at most {MAX_HOOK_WORDS} words")
    return tuple(value)


def _dns_servers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_DNS_SERVERS:
        raise Refused(f"must be a list of at most {MAX_DNS_SERVERS} addresses", hint='["10.54.0.1"]')
    for item in value:
        try:
            ipaddress.ip_address(item)
        except (ValueError, TypeError):
            raise Refused(f"holds {item!r}, which is not an IP address") from None
    return tuple(value)


def _dns_search(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_DNS_SEARCH:
        raise Refused(f"must be a list of at most {MAX_DNS_SEARCH} domains", hint='["cluster.example.org"]')
    for item in value:
        if not isinstance(item, str) or len(item) > 253 or not re.fullmatch(DOMAIN, item):
            raise Refused(f"holds {item!r}, which is not a domain name")
    return tuple(value)


@dataclass(frozen=True)
class MasterConfig:
    heartbeat_interval: float = setting(_seconds(0.01, 3600), "seconds between a node's heartbeats", 5.0)
    heartbeat_timeout: float = setting(
        _seconds(0.01, 86400), "seconds of silence after which a node is lost (Scyld: 30)", 30.0
    )
    first_node_address: str | None = setting(
        _typed(str, then=_first_node_address), "BeoNSS: node N's address is this IPv4 address + N", None
    )
    # agent.clocksync: the node sets its clock to the master's at registration, and again past this drift
    max_clock_drift: float = setting(
        _seconds(0.001, 3600), "seconds a node's clock may drift from the master's before it is set again", 0.5
    )
    hostname_prefix: str = setting(_typed(str, then=_hostname_prefix), 'node N is named PREFIX + N, e.g. "n3"', "n")
    reap_interval: float = setting(
        _seconds(0, 3600), "how often to look for lost nodes; 0: heartbeat_timeout / 4, at most 1 s", 0.0
    )
    # so that the registry does not grow for as long as the cluster runs
    keep_boots: int = setting(
        _typed(int, then=_keep_boots), "a node's events and log lines are kept for this many boots", 10
    )
    # beoboot.master.hostsfile: "/etc/hosts", so that the master resolves the nodes too, or dnsmasq's addn-hosts
    hosts_file: str = setting(
        _typed(str, then=_hosts_file),
        'a hosts file where beoserv keeps the nodes, so that the master resolves them; "": none',
        "",
    )
    # beoboot.master.admission: from the master itself, root's processes or none; from another host, only a
    # privileged source port unless require_reserved_port is off
    local_nodes: str = setting(
        _typed(str, then=_local_nodes), 'who on the master may register a node: "root" or "none"', "root"
    )
    require_reserved_port: bool = setting(
        _typed(bool), "nodes on other hosts register from a privileged port; false: nodes behind NAT", True
    )
    # from connecting, or from the last response on a kept connection, then again for its body: a client that
    # trickles bytes is cut off, not waited for for ever. Set when beoserv starts; a job link or a download,
    # once under way, has no bound
    request_timeout: float = setting(
        _seconds(0.1, 3600), "seconds a client has to send a request's head, then its body", 30.0
    )

    # beoboot.master.jobhub: jobs outlive their node's link and beoserv itself, for so long
    job_link_wait: float = setting(
        _seconds(1, 86400),
        "seconds a job whose node link dropped waits for the node to link again before it ends (255)",
        120.0,
    )
    job_reattach_wait: float = setting(
        _seconds(1, 86400),
        "seconds a job a restarted beoserv took back waits for its bpsh to reattach before it is hung up",
        330.0,
    )

    # beoboot.master.fdlimit: the descriptors these need must fit the hard open-files limit, or beoserv does
    # not start. Both are set when beoserv starts (its limit is checked then); a reload keeps them
    max_nodes: int = setting(
        _typed(int, then=lambda value: values.whole(value, 1, MAX_NODES_MAX, "a number of nodes")),
        "nodes beoserv serves at once: it refuses to start if its open-files limit cannot hold them",
        1024,
    )
    # beoboot.master.transfers: boot files and libcache objects sent at once, beyond which requests wait their
    # turn (round robin across nodes) or are told to retry (503, Retry-After). A few saturate any link (on
    # loopback, 2 concurrent transfers reach the same GB/s as 128); more than that only hold descriptors
    max_transfers: int = setting(
        _typed(int, then=lambda value: values.whole(value, 1, MAX_TRANSFERS_MAX, "a number of transfers")),
        "boot files and libcache objects sent at once; more wait their turn or are told to retry",
        64,
    )

    # beoboot.master.hwdrivers: a node's devices that no driver bound get the modules that drive them from
    # this sysroot's kernel module tree (the one the images were built from), with their firmware
    drivers_sysroot: str = setting(
        _typed(str),
        'the sysroot whose kernel modules and firmware drive the nodes\' hardware; "": send none',
        "/",
    )

    # beoboot.master.selection: @NAME in every command that takes nodes (bpsh, bpstat, bpctl, bpcp)
    groups: tuple[tuple[str, str], ...] = setting(
        _groups, 'named node sets: [groups] rack1 = "n[0-31]"; used as @rack1', (), toml=dict
    )
    # beoboot.master.mountspec, carried out by stage3.sitemounts before the node takes jobs
    mounts: tuple[MountConfig, ...] = setting(
        [MountConfig],
        'file systems each node mounts into its environment root: [[mounts]] type = "nfs", source = "master:/home", '
        'target = "/home"',
        (),
        toml=toml_tables,
    )
    # stage3.names: the nodes' resolv.conf; none here: the name servers of each node's DHCP lease
    dns_servers: tuple[str, ...] = setting(
        _dns_servers, "name servers for the nodes' resolv.conf; []: those of their DHCP leases", (), toml=list
    )
    dns_search: tuple[str, ...] = setting(_dns_search, "search domains for the nodes' resolv.conf", (), toml=list)
    # beoboot.master.nodehooks: run once per boot, BEOBOOT_NODE=N in their environment, never holding the node
    on_node_up: tuple[str, ...] = setting(
        _argv, "a command run when a node comes up (BEOBOOT_NODE=N): a program and its arguments", (), toml=list
    )
    on_node_down: tuple[str, ...] = setting(
        _argv, "a command run when a node goes down (BEOBOOT_NODE=N)", (), toml=list
    )
    hook_timeout: float = setting(_seconds(0.1, 86400), "seconds a hook may run before it is killed", 300.0)
    hook_concurrency: int = setting(
        _typed(int, then=lambda value: values.whole(value, 1, 1024, "a number of hooks")),
        "hooks running at once; more wait their turn",
        8,
    )
    # the groups' nodes, from `groups` and hostname_prefix (config_from_dict): not a key of the file
    group_nodes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def node_address(self, number: int) -> str | None:
        """BeoNSS rule: node N's address is the first node address plus N."""
        if self.first_node_address is None:
            return None
        return str(ipaddress.IPv4Address(self.first_node_address) + number)

    @property
    def effective_reap_interval(self) -> float:
        return self.reap_interval or min(1.0, self.heartbeat_timeout / 4)


def parse_config(text: str, source: str = "<config>") -> MasterConfig:
    try:
        raw = parse_toml(text, source)
    except ConfigError as exc:
        raise ConfigError(exc.message, hint="fix the file, then send SIGHUP again") from None
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str) -> MasterConfig:
    config = MasterConfig(**parse(MasterConfig, raw, source))
    group_nodes = []
    for name, text in config.groups:
        try:
            group_nodes.append((name, tuple(nodeset.parse(text, None, config.hostname_prefix))))
        except nodeset.NodeSetError as exc:
            raise ConfigError(
                f"{source}: groups.{name} = {text[:80]!r}: {exc.why}",
                hint=f"a group lists nodes, not other groups: {nodeset.SYNTAX.split('; @')[0]}",
            ) from None
    config = replace(config, group_nodes=tuple(group_nodes))
    if (problem := mounts_problem(config.mounts)) is not None:
        raise ConfigError(f"{source}: {problem}", hint="see beoserv --help for the keys of [[mounts]]")
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"{source}: heartbeat_timeout = {config.heartbeat_timeout} must exceed "
            f"heartbeat_interval = {config.heartbeat_interval}",
            hint="allow a few missed heartbeats, e.g. timeout = 6 x interval",
        )
    return config


def load_config(path: Path | None) -> MasterConfig:
    if path is None:
        return MasterConfig()
    return config_from_dict(read_toml(path, "beoserv config", hint="fix the file, then send SIGHUP again"), str(path))
