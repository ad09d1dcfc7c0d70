"""beoserv's own config (TOML): a table of settings, parsed into a frozen MasterConfig; re-read on SIGHUP.

Example beoserv.toml:

    heartbeat_interval = 5.0
    heartbeat_timeout = 30.0          # Scyld's default: a node is lost after 30 s of silence
    first_node_address = "10.54.0.10" # BeoNSS: node N is this address + N
    hostname_prefix = "n"
    keep_boots = 10                   # each node's events and log lines of its last 10 boots are kept
    hosts_file = "/etc/hosts"         # the master resolves n3 and .3 too: beoserv keeps a block of it
    request_timeout = 30.0            # a client sends a request's head, then its body, within this
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

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
    "request_timeout": (int, float),
}


def parse_config(text: str, source: str = "<config>") -> MasterConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}", hint="fix the file, then send SIGHUP again") from None
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str) -> MasterConfig:
    known = {f.name for f in fields(MasterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}", hint="allowed: " + ", ".join(sorted(known)))
    for key, value in raw.items():
        allowed = _TYPES[key]
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{source}: {key} = {value!r} must be {' or '.join(t.__name__ for t in allowed)}")
    values = {k: float(v) if _TYPES[k] == (int, float) else v for k, v in raw.items()}
    config = MasterConfig(**values)
    _check(config, source)
    return config


def _check(config: MasterConfig, source: str) -> None:
    if config.heartbeat_interval <= 0:
        raise ConfigError(f"{source}: heartbeat_interval = {config.heartbeat_interval} must be > 0")
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"{source}: heartbeat_timeout = {config.heartbeat_timeout} must exceed "
            f"heartbeat_interval = {config.heartbeat_interval}",
            hint="allow a few missed heartbeats, e.g. timeout = 6 x interval",
        )
    if config.keep_boots < 1:
        raise ConfigError(f"{source}: keep_boots = {config.keep_boots} must be >= 1", hint="the current boot is kept")
    if config.request_timeout <= 0:
        raise ConfigError(f"{source}: request_timeout = {config.request_timeout} must be > 0")
    if config.reap_interval < 0:
        raise ConfigError(f"{source}: reap_interval = {config.reap_interval} must be >= 0")
    if config.first_node_address is not None:
        try:
            ipaddress.IPv4Address(config.first_node_address)
        except ValueError:
            raise ConfigError(
                f"{source}: first_node_address = {config.first_node_address!r} is not an IPv4 address",
                hint='write it like "10.54.0.10"',
            ) from None
    if config.hosts_file and not (config.hosts_file.startswith("/") and os.path.isdir(os.path.dirname(config.hosts_file))):
        raise ConfigError(
            f"{source}: hosts_file = {config.hosts_file!r} must be an absolute path in an existing directory",
            hint='"/etc/hosts" to resolve the nodes on the master, or "" for no file',
        )
    if not config.hostname_prefix.isalpha():
        raise ConfigError(f"{source}: hostname_prefix = {config.hostname_prefix!r} must be letters only")


def load_config(path: Path | None) -> MasterConfig:
    if path is None:
        return MasterConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read beoserv config {path}: {exc.strerror}") from None
    return parse_config(text, str(path))
