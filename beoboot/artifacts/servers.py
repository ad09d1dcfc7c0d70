"""The configs of the servers that hand out the network-boot tree: dnsmasq (DHCP or proxy DHCP, and TFTP)
and nginx (HTTP), for the nodes' address range.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from beoboot.artifacts import render, write_text
from beoboot.artifacts.floppy import BOOT_SCRIPT
from beoboot.errors import ConfigError


@dataclass(frozen=True)
class NodeRange:
    """The addresses the nodes get: first..last inside `network`."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    network: ipaddress.IPv4Network


def parse_node_range(text: str, *, default_prefix: int = 24) -> NodeRange:
    """Parse "FIRST-LAST" or "FIRST-LAST/PREFIX", e.g. "10.54.0.10-10.54.0.250/24"."""
    spec, _, prefix_text = text.strip().partition("/")
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        raise ConfigError(
            f"node range {text!r} has no '-'", hint='write it as FIRST-LAST[/PREFIX], e.g. "10.54.0.10-10.54.0.250/24"'
        )
    try:
        first = ipaddress.IPv4Address(first_text.strip())
        last = ipaddress.IPv4Address(last_text.strip())
        prefix = int(prefix_text) if prefix_text else default_prefix
        network = ipaddress.IPv4Network(f"{first}/{prefix}", strict=False)
    except ValueError as err:
        raise ConfigError(
            f"node range {text!r}: {err}", hint='write it as FIRST-LAST[/PREFIX], e.g. "10.54.0.10-10.54.0.250/24"'
        ) from None
    if last < first:
        raise ConfigError(f"node range {text!r} ends before it starts", hint="put the lower address first")
    if last not in network:
        raise ConfigError(
            f"node range {text!r}: {last} is outside {network}", hint="give a prefix that holds both ends"
        )
    if first == network.network_address or last == network.broadcast_address:
        raise ConfigError(
            f"node range {text!r} includes the network or broadcast address of {network}",
            hint="start after the network address and end before the broadcast address",
        )
    return NodeRange(first, last, network)


def write_server_configs(
    outdir: Path,
    *,
    node_range: NodeRange,
    proxy_dhcp: bool,
    http_root: Path,
    master_url: str,
    mtime: int,
    interface: str = "eth0",
    tftp_root: Path | None = None,
    http_listen: str = "80",
    state_dir: Path | None = None,
    lease: str = "12h",
    nginx_user: str | None = None,
    installed_dir: Path | None = None,
) -> list[Path]:
    """dnsmasq.conf and nginx.conf in `outdir`. `state_dir` holds nginx's pid, logs and temp files;
    `nginx_user` is the user nginx's workers run as when started by root (nginx's default: nobody)."""
    outdir = Path(outdir).absolute()
    if state_dir is None:  # beside the configs; a state_dir given elsewhere is the server host's business
        state_dir = outdir / "nginx-state"
        state_dir.mkdir(parents=True, exist_ok=True)
    state_dir = Path(state_dir).absolute()
    dnsmasq_conf, nginx_conf = outdir / "dnsmasq.conf", outdir / "nginx.conf"
    # the "Run:" lines name where the configs will be used from, which may not be where they are written
    named_dir = Path(installed_dir) if installed_dir else outdir
    dnsmasq = render(
        "dnsmasq.conf.j2",
        conf_path=named_dir / dnsmasq_conf.name,
        proxy_dhcp=proxy_dhcp,
        interface=interface,
        network=node_range.network.network_address,
        netmask=node_range.network.netmask,
        start=node_range.first,
        end=node_range.last,
        lease=lease,
        tftp_root=Path(tftp_root or http_root).absolute(),
        master_url=master_url,
        script_url=f"{master_url.rstrip('/')}/{BOOT_SCRIPT}",
    )
    nginx = render(
        "nginx.conf.j2",
        conf_path=named_dir / nginx_conf.name,
        http_root=Path(http_root).absolute(),
        listen=http_listen,
        state_dir=state_dir,
        user=nginx_user,
    )
    return [write_text(dnsmasq_conf, dnsmasq, mtime=mtime), write_text(nginx_conf, nginx, mtime=mtime)]
