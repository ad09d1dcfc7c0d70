"""beoserv's own config (TOML): a table of settings, parsed into a frozen MasterConfig; re-read on SIGHUP.

Example beoserv.toml:

    heartbeat_interval = 5.0
    heartbeat_timeout = 30.0          # Scyld's default: a node is lost after 30 s of silence
    first_node_address = "10.54.0.10" # BeoNSS: node N is this address + N
    hostname_prefix = "n"
    keep_boots = 10                   # each node's events and log lines of its last 10 boots are kept
    hosts_file = "/etc/hosts"         # the master resolves n3 and .3 too: beoserv keeps a block of it
    local_nodes = "root"              # "none": no registration from the master itself (beoboot.master.admission)
    require_reserved_port = true      # false: nodes behind NAT, which rewrites their privileged source ports
    request_timeout = 30.0            # a client sends a request's head, then its body, within this
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent import values
from beoboot.configfile import checked, parse_toml, read_toml, shown
from beoboot.errors import ConfigError


@dataclass(frozen=True)
class MasterConfig:
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    first_node_address: str | None = None
    hostname_prefix: str = "n"
    # how often the reaper looks for silent nodes; 0 picks heartbeat_timeout / 4, at most 1 s
    reap_interval: float = 0.0
    # a node's events and log lines are kept for its last keep_boots boots, so the registry does not grow
    # for as long as the cluster runs
    keep_boots: int = 10
    # a hosts file in which beoserv keeps the nodes' names and addresses (beoboot.master.hostsfile), so
    # that the master resolves them too: "/etc/hosts", or a file for dnsmasq's addn-hosts; "": none
    hosts_file: str = ""
    # who may register a node (beoboot.master.admission): from the master itself, root's processes ("root")
    # or none ("none"); from another host, only a privileged source port unless require_reserved_port is off
    local_nodes: str = "root"
    require_reserved_port: bool = True
    # seconds a client has to send a request's head (from connecting, or from the last response on a kept
    # connection), then again its body: a client that trickles bytes is cut off, not waited for for ever.
    # The head's bound is set when beoserv starts; a job link or a download, once under way, has none
    request_timeout: float = 30.0

    def node_address(self, number: int) -> str | None:
        """BeoNSS rule: node N's address is the first node address plus N."""
        if self.first_node_address is None:
            return None
        return str(ipaddress.IPv4Address(self.first_node_address) + number)

    @property
    def effective_reap_interval(self) -> float:
        return self.reap_interval or min(1.0, self.heartbeat_timeout / 4)


_TYPES: dict[str, tuple[type, ...]] = {
    "heartbeat_interval": (int, float),
    "heartbeat_timeout": (int, float),
    "first_node_address": (str,),
    "hostname_prefix": (str,),
    "reap_interval": (int, float),
    "keep_boots": (int,),
    "hosts_file": (str,),
    "local_nodes": (str,),
    "require_reserved_port": (bool,),
    "request_timeout": (int, float),
}
# The numbers are finite (NaN or infinity would stop a timer for ever) and within these ranges.
_SECONDS = {
    "heartbeat_interval": (0.01, 3600.0),
    "heartbeat_timeout": (0.01, 86400.0),
    "reap_interval": (0.0, 3600.0),
    "request_timeout": (0.1, 3600.0),
}
KEEP_BOOTS_MAX = 10000
HOSTNAME_PREFIX_MAX = 32  # a DNS label holds 63 characters: the prefix and the node number must fit
LOCAL_NODES = ("root", "none")


def parse_config(text: str, source: str = "<config>") -> MasterConfig:
    try:
        raw = parse_toml(text, source)
    except ConfigError as exc:
        raise ConfigError(exc.message, hint="fix the file, then send SIGHUP again") from None
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str) -> MasterConfig:
    known = {f.name for f in fields(MasterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}", hint="allowed: " + ", ".join(sorted(known)))
    for key, value in raw.items():
        allowed = _TYPES[key]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ConfigError(f"{source}: {key} = {shown(value)} must be {' or '.join(t.__name__ for t in allowed)}")
        if key in _SECONDS:  # before float(): an integer of 400 digits is no float
            checked(source, key, value, values.number, *_SECONDS[key])
    typed: dict[str, Any] = {k: float(v) if _TYPES[k] == (int, float) else v for k, v in raw.items()}
    config = MasterConfig(**typed)
    _check(config, source)
    return config


def _check(config: MasterConfig, source: str) -> None:
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"{source}: heartbeat_timeout = {config.heartbeat_timeout} must exceed "
            f"heartbeat_interval = {config.heartbeat_interval}",
            hint="allow a few missed heartbeats, e.g. timeout = 6 x interval",
        )
    if config.keep_boots < 1:
        raise ConfigError(f"{source}: keep_boots = {config.keep_boots} must be >= 1", hint="the current boot is kept")
    checked(source, "keep_boots", config.keep_boots, values.whole, 1, KEEP_BOOTS_MAX, "a number of boots")
    if config.first_node_address is not None:
        try:
            ipaddress.IPv4Address(config.first_node_address)
        except ValueError:
            raise ConfigError(
                f"{source}: first_node_address = {config.first_node_address!r} is not an IPv4 address",
                hint='write it like "10.54.0.10"',
            ) from None
    if config.hosts_file:
        checked(source, "hosts_file", config.hosts_file, values.one_line, "an absolute path")
    if config.hosts_file and not (
        config.hosts_file.startswith("/") and os.path.isdir(os.path.dirname(config.hosts_file))
    ):
        raise ConfigError(
            f"{source}: hosts_file = {config.hosts_file!r} must be an absolute path in an existing directory",
            hint='"/etc/hosts" to resolve the nodes on the master, or "" for no file',
        )
    prefix = config.hostname_prefix
    if not (prefix.isascii() and prefix.isalpha() and len(prefix) <= HOSTNAME_PREFIX_MAX):
        # it begins every node's host name, in the hosts file and in DNS: ASCII letters only
        raise ConfigError(
            f"{source}: hostname_prefix = {shown(prefix)} must be letters only (a-z, A-Z), "
            f"at most {HOSTNAME_PREFIX_MAX}"
        )
    if config.local_nodes not in LOCAL_NODES:
        raise ConfigError(
            f"{source}: local_nodes = {shown(config.local_nodes)} must be one of {', '.join(map(repr, LOCAL_NODES))}",
            hint='"root": simulated nodes and QEMU test nodes run by root may register; "none": no process on the master may',
        )


def load_config(path: Path | None) -> MasterConfig:
    if path is None:
        return MasterConfig()
    return config_from_dict(read_toml(path, "beoserv config", hint="fix the file, then send SIGHUP again"), str(path))
