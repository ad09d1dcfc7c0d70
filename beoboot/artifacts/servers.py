"""The configs of the master's servers, sized for the site's node count ([artifacts] nodes): dnsmasq (DHCP or
proxy DHCP, and TFTP for the network-boot tree), nginx (HTTP for the same tree) and beoserv's systemd unit.

What each size is, and why (measured with tests/integration/test_site_storm_netns.py, 1000 nodes):
    node_range       nodes and half as many again (range_needed): dnsmasq does not hold an address it
                     offers, and starts looking for a free one at a hash of the MAC, so in a fuller range
                     nodes booting together are offered the same address and all but one NAKed
    dhcp-lease-max   every address of the range (dnsmasq's default is 1000 leases)
    tftp-max         nodes: a node fetches one file at a time, and a boot storm is every node at once
    dnsmasq's files  2 x tftp-max + 64 (dnsmasq_nofile), in the Run line of dnsmasq.conf
    beoserv's files  4 x nodes + 1024, at least 8192 (beoserv_nofile), the unit's LimitNOFILE
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from beoboot.artifacts import render, write_text
from beoboot.artifacts.floppy import BOOT_SCRIPT
from beoboot.errors import ConfigError
from beoboot.master.bpsh.client import DEFAULT_SOCKET

if TYPE_CHECKING:
    from beoboot.config import ArtifactsConfig

DNSMASQ_CONF, NGINX_CONF, BEOSERV_UNIT = "dnsmasq.conf", "nginx.conf", "beoserv.service"
# Where the master keeps its state; systemd makes it for beoserv (StateDirectory=) and nginx's is inside.
STATE_DIR = Path("/var/lib/beoboot")
NGINX_STATE_DIR = STATE_DIR / "nginx"
REGISTRY = STATE_DIR / "nodes.db"
MASTER_CONFIG = Path("/etc/beoboot/beoserv.toml")
# dnsmasq rewrites and fsyncs its whole lease file for every lease it grants or renews: in /run (RAM) that
# costs nothing, and what a reboot loses, dhcp-authoritative rebuilds from the nodes' renewals.
DNSMASQ_LEASES = Path("/run/beoboot-dnsmasq.leases")
CLASS_C = (int(ipaddress.IPv4Address("192.0.0.0")), int(ipaddress.IPv4Address("223.255.255.255")))


@dataclass(frozen=True)
class NodeRange:
    """The addresses the nodes get: first..last inside `network`."""

    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    network: ipaddress.IPv4Network

    @property
    def addresses(self) -> int:
        """How many addresses dnsmasq hands out from the range: every one, but in 192.0.0.0-223.255.255.255
        (the old class C) none that ends in .0 or .255 (dnsmasq's address_allocate, for Windows' sake)."""
        first, last = int(self.first), int(self.last)
        low, high = max(first, CLASS_C[0]), min(last, CLASS_C[1])
        skipped = sum((high - end) // 256 - (low - 1 - end) // 256 for end in (0, 255)) if low <= high else 0
        return last - first + 1 - skipped


RANGE_EXAMPLE = 'write it as FIRST-LAST[/PREFIX], e.g. "10.54.0.10-10.54.0.250/24"'


def parse_node_range(text: str, *, default_prefix: int = 24) -> NodeRange:
    """Parse "FIRST-LAST" or "FIRST-LAST/PREFIX", e.g. "10.54.0.10-10.54.0.250/24"."""
    spec, _, prefix_text = text.strip().partition("/")
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        raise ConfigError(f"node range {text!r} has no '-'", hint=RANGE_EXAMPLE)
    try:
        first = ipaddress.IPv4Address(first_text.strip())
        last = ipaddress.IPv4Address(last_text.strip())
        prefix = int(prefix_text) if prefix_text else default_prefix
        network = ipaddress.IPv4Network(f"{first}/{prefix}", strict=False)
    except ValueError as err:
        raise ConfigError(f"node range {text!r}: {err}", hint=RANGE_EXAMPLE) from None
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


# -- sizes


def range_needed(nodes: int) -> int:
    """The addresses a range needs for `nodes`: the nodes and half as many again. 1000 nodes with sequential
    MACs booting within 2 s drew about 5000 NAKs and took 8 to 14 s from a range of 1016 addresses; from one
    of 1500, no NAK and 2 s."""
    return nodes + (nodes + 1) // 2


def nodes_fitting(addresses: int) -> int:
    """The most nodes a range of `addresses` holds (range_needed's inverse)."""
    nodes = 2 * addresses // 3
    while nodes > 0 and range_needed(nodes) > addresses:
        nodes -= 1
    while range_needed(nodes + 1) <= addresses:
        nodes += 1
    return nodes


def widened(node_range: NodeRange, needed: int) -> str | None:
    """A range from the same first address with `needed` addresses, as FIRST-LAST/PREFIX (the prefix
    widened as far as it takes); None when no IPv4 network holds it."""
    last = int(node_range.first) + needed - 1
    while (
        last <= 0xFFFFFFFE
        and NodeRange(node_range.first, ipaddress.IPv4Address(last), node_range.network).addresses < needed
    ):
        last += 1
    for prefix in range(node_range.network.prefixlen, 7, -1):
        network = ipaddress.IPv4Network(f"{node_range.first}/{prefix}", strict=False)
        if last < int(network.broadcast_address) and node_range.first != network.network_address:
            return f"{node_range.first}-{ipaddress.IPv4Address(last)}/{prefix}"
    return None


def tftp_max(nodes: int) -> int:
    """Concurrent TFTP transfers: a node fetches its boot files one after another, and in a boot storm every
    node does at once. A request past the limit waits unread until a transfer ends, and a PXE ROM gives up
    after a few seconds: with dnsmasq's default of 50, 847 of 1000 clients reading 2 MiB timed out."""
    return nodes


def dnsmasq_nofile(nodes: int) -> int:
    """dnsmasq's open-file limit: a descriptor per transfer and one per file sent (the same file to many
    nodes is opened once; different files to n nodes need 2n: dnsmasq(8), --tftp-max), and 64 for its own
    (it keeps 50, and caps tftp-max at its limit less those: dnsmasq.c, "restricting maximum simultaneous
    TFTP transfers")."""
    return 2 * tftp_max(nodes) + 64


def beoserv_nofile(nodes: int) -> int:
    """beoserv's open-file limit: about 2 sockets per idle node (its job link and its heartbeats), 2 more
    for a node that boots (a download and the file it reads), and 1024 for the rest (bpsh clients with the
    3 descriptors each hands over, the registry, logs, listeners); never below 8192."""
    return max(8192, 4 * nodes + 1024)


def listen_address(master_url: str) -> str:
    """beoserv's --listen: every address (the master URL's host is the master as the nodes see it, which may
    not be an address of its own, e.g. QEMU's 10.0.2.2), on the URL's port."""
    url = urlsplit(master_url)
    return f"0.0.0.0:{url.port or (443 if url.scheme == 'https' else 80)}"


# -- the files


@dataclass(frozen=True)
class DnsService:
    """dnsmasq's DNS ([artifacts] dns): the node names from the host files in `hosts_dir` (beoserv keeps
    its hosts_file there), `master` as the nodes reach it, every other name forwarded to `forward`."""

    forward: tuple[str, ...] = ()
    hosts_dir: str = "/var/lib/beoboot/hosts.d"


def master_address(master_url: str) -> str | None:
    """The master's IPv4 address in its URL, as the nodes reach it; None when the URL names it by name."""
    try:
        return str(ipaddress.IPv4Address(urlsplit(master_url).hostname or ""))
    except ValueError:
        return None


def write_server_configs(
    outdir: Path,
    *,
    node_range: NodeRange,
    proxy_dhcp: bool,
    http_root: Path,
    master_url: str,
    mtime: int,
    nodes: int | None = None,
    lease_time: str | None = None,
    interface: str = "eth0",
    tftp_root: Path | None = None,
    http_listen: str = "80",
    state_dir: Path | None = None,
    nginx_user: str | None = None,
    installed_dir: Path | None = None,
    dns: DnsService | None = None,
) -> list[Path]:
    """dnsmasq.conf and nginx.conf in `outdir`, in that order, for `nodes` with leases of `lease_time` (None:
    the embedded default config's). `state_dir` holds nginx's pid, logs and temp files; `nginx_user` is the
    user nginx's workers run as when started by root (nginx's default: nobody)."""
    outdir = Path(outdir).absolute()
    if nodes is None or lease_time is None:
        default = default_artifacts()
        nodes, lease_time = nodes or default.nodes, lease_time or default.lease_time
    if state_dir is None:  # beside the configs; a state_dir given elsewhere is the server host's business
        state_dir = outdir / "nginx-state"
        state_dir.mkdir(parents=True, exist_ok=True)
    http_root = Path(http_root).absolute()
    # the "Run:" lines name where the configs will be used from, which may not be where they are written
    named_dir = Path(installed_dir) if installed_dir else outdir
    dnsmasq = render(
        "dnsmasq.conf.j2",
        conf_path=named_dir / DNSMASQ_CONF,
        nofile=dnsmasq_nofile(nodes),
        nodes=nodes,
        proxy_dhcp=proxy_dhcp,
        interface=interface,
        network=node_range.network.network_address,
        netmask=node_range.network.netmask,
        start=node_range.first,
        end=node_range.last,
        addresses=node_range.addresses,
        lease_time=lease_time,
        lease_file=DNSMASQ_LEASES,
        tftp_root=Path(tftp_root or http_root).absolute(),
        tftp_max=tftp_max(nodes),
        master_url=master_url,
        script_url=f"{master_url.rstrip('/')}/{BOOT_SCRIPT}",
        dns=dns,
        master_address=master_address(master_url),
    )
    nginx = render(
        "nginx.conf.j2",
        conf_path=named_dir / NGINX_CONF,
        http_root=http_root,
        listen=http_listen,
        state_dir=Path(state_dir).absolute(),
        user=nginx_user,
    )
    return [
        write_text(outdir / DNSMASQ_CONF, dnsmasq, mtime=mtime),
        write_text(outdir / NGINX_CONF, nginx, mtime=mtime),
    ]


def write_beoserv_unit(outdir: Path, *, nodes: int, beoserv: str, root: Path, master_url: str, mtime: int) -> Path:
    """beoserv.service in `outdir`: `beoserv` (its path on the master) serving the tree at `root` to
    `nodes` nodes, on the port of `master_url`."""
    unit = render(
        "beoserv.service.j2",
        nodes=nodes,
        beoserv=beoserv,
        root=Path(root).absolute(),
        db=REGISTRY,
        listen=listen_address(master_url),
        config=MASTER_CONFIG,
        bpsh_socket=DEFAULT_SOCKET,
        nofile=beoserv_nofile(nodes),
        state_directory=STATE_DIR.relative_to("/var/lib"),
        runtime_directory=Path(DEFAULT_SOCKET).parent.relative_to("/run"),
    )
    return write_text(Path(outdir).absolute() / BEOSERV_UNIT, unit, mtime=mtime)


def default_artifacts() -> ArtifactsConfig:
    """The embedded default config's [artifacts], for a caller that sizes nothing itself."""
    from beoboot import config

    artifacts = config.load(environ={}).artifacts
    assert artifacts is not None
    return artifacts
