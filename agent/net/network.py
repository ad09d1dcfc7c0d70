"""Network bring-up for stages 1 and 2: NIC drivers -> interface -> DHCP -> address, route, resolv.conf.

Nothing here touches the network in a dry run: drivers are only named, and DHCP is skipped. The part
after detection (`configure_interface`) also runs on its own in a test's network namespace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent import cmdline
from agent.config import AgentConfig
from agent.download import Backoff
from agent.net import dhcp, nicdetect
from agent.net.netlink import Netlink, gateway_is_onlink

RESOLV_CONF = "/etc/resolv.conf"
INTERFACE_TIMEOUT = 15.0  # seconds for a loaded driver to register its interface
CARRIER_TIMEOUT = 10.0  # seconds for a link to come up after IFF_UP (e1000 needs ~2 s of autonegotiation)


class NetworkError(Exception):
    """The node cannot get on the network: the message says which step failed, the hint what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class NetworkState:
    interface: str
    lease: dhcp.Lease
    master_url: str | None
    # time.monotonic() when the DHCP exchange began: the lease is counted from there (a little early, which
    # is the safe side: RFC 2131 4.4.1 counts from the REQUEST, sent moments later)
    lease_obtained_at: float | None = None


def choose_master_url(cmdline_options: dict[str, str], lease: dhcp.Lease | None, configured: str | None) -> str | None:
    """beoboot.master=URL on the kernel command line, else DHCP option 224, else the image's config."""
    return cmdline_options.get("master") or (lease.master_url if lease else None) or configured


def resolv_conf(lease: dhcp.Lease) -> str:
    lines = [f"# written by beoboot from the DHCP lease on {lease.interface}"]
    if lease.domain:
        lines.append(f"search {lease.domain}")
    lines += [f"nameserver {server}" for server in lease.dns]
    return "\n".join(lines) + "\n"


def describe(state: NetworkState) -> str:
    lease = state.lease
    return (
        f"beoboot: dhcp {state.interface} {lease.cidr} router {lease.router or 'none'} "
        f"master {state.master_url or 'none'}"
    )


def configure_interface(
    interface: str,
    *,
    cmdline_options: dict[str, str],
    configured_master: str | None,
    say: Callable[[str], None],
    resolv_path: str = RESOLV_CONF,
    sysfs: str = "/sys",
    client_factory: Callable[..., dhcp.DhcpClient] = dhcp.DhcpClient,
) -> NetworkState:
    """DHCP on an interface that is up, then apply the lease with netlink and write resolv.conf."""
    mac = nicdetect.mac_address(interface, sysfs)
    with dhcp.PacketTransport(interface) as transport:
        asked_at = time.monotonic()
        lease = client_factory(interface, mac, transport, log=say).obtain_lease()
    with Netlink() as nl:
        nl.link_up(interface)
        nl.add_address(interface, lease.address, lease.prefix_len)
        if lease.router:
            onlink = gateway_is_onlink(lease.address, lease.prefix_len, lease.router)
            nl.add_default_route(interface, lease.router, onlink=onlink)
    if lease.dns or lease.domain:
        os.makedirs(os.path.dirname(resolv_path) or ".", exist_ok=True)
        with open(resolv_path, "w", encoding="utf-8") as f:
            f.write(resolv_conf(lease))
    state = NetworkState(interface, lease, choose_master_url(cmdline_options, lease, configured_master), asked_at)
    say(describe(state))
    return state


def _candidate_interfaces(plans: list[nicdetect.NicPlan], sysfs: str) -> list[str]:
    found: list[str] = []
    for nic in plans:
        found += [i for i in nicdetect.interfaces_of(nic.device.slot, sysfs) if i not in found]
    return found


def bring_up(
    config: AgentConfig,
    *,
    dry_run: bool,
    cmdline_options: dict[str, str],
    say: Callable[[str], None],
    sysfs: str = "/sys",
    resolv_path: str = RESOLV_CONF,
) -> NetworkState | None:
    """The whole bring-up. Returns None only in a dry run; raises NetworkError when the node cannot get on."""
    plans = nicdetect.load_nic_drivers(config, dry_run=dry_run, say=say, sysfs=sysfs)
    if dry_run:
        say("beoboot: dry run: would wait for the interfaces, run DHCP and apply the lease")
        return None
    drivable = [nic for nic in plans if nic.modules]
    if not drivable:
        raise NetworkError(
            "no network card of this node has a driver in the image" if plans else "this node has no network card",
            hint=nicdetect.CHECK_HINT,
        )
    nicdetect.wait_for(lambda: bool(_candidate_interfaces(drivable, sysfs)), INTERFACE_TIMEOUT)
    interfaces = _candidate_interfaces(drivable, sysfs)
    if wanted := cmdline_options.get("interface"):
        interfaces = [i for i in interfaces if i == wanted]
    if not interfaces:
        raise NetworkError(
            f"drivers loaded but no network interface appeared in {INTERFACE_TIMEOUT:.0f} s"
            + (f" named {wanted!r} (beoboot.interface)" if wanted else ""),
            hint="see the kernel messages above for the driver's error",
        )
    with Netlink() as nl:
        for interface in ["lo", *interfaces]:
            nl.link_up(interface)
    nicdetect.wait_for(lambda: any(nicdetect.carrier(i, sysfs) for i in interfaces), CARRIER_TIMEOUT)
    with_carrier = [i for i in interfaces if nicdetect.carrier(i, sysfs)]
    if not with_carrier:
        raise NetworkError(
            f"no link on {', '.join(interfaces)} after {CARRIER_TIMEOUT:.0f} s",
            hint="check the cable and the switch port",
        )
    say(f"beoboot: link up on {', '.join(with_carrier)}")
    failures = []
    for interface in with_carrier:
        try:
            return configure_interface(
                interface,
                cmdline_options=cmdline_options,
                configured_master=config.master_url,
                say=say,
                resolv_path=resolv_path,
                sysfs=sysfs,
            )
        except (dhcp.DhcpError, OSError) as exc:
            say(f"beoboot: dhcp {interface} failed: {exc}")
            failures.append(f"{interface}: {exc}")
    raise NetworkError(
        "no lease on any interface (" + "; ".join(failures) + ")",
        hint="check that a DHCP server (the master's beoserv or dnsmasq) serves this network",
    )


RETRY = Backoff(first=5.0, cap=60.0)


def bring_up_until_it_works(config: AgentConfig, *, dry_run: bool, say: Callable[..., None]) -> NetworkState | None:
    """A node without network has nothing else to do: say why, once per try, and try again (never hang
    silently; a driver can appear once its cable is plugged or the switch port comes up). None in a dry run."""
    attempt = 0
    while True:
        try:
            return bring_up(config, dry_run=dry_run, cmdline_options=cmdline.read(), say=say)
        except NetworkError as exc:
            wait = RETRY.delay(attempt)
            hint = f" ({exc.hint})" if exc.hint else ""
            say(f"beoboot: cannot get on the network: {exc.message}{hint}; retrying in {wait:.0f} s", "error")
            attempt += 1
            time.sleep(wait)
