"""Stage 2, the PXE ramdisk: log to the master at once, fetch stage 3 (pinned), unpack it into a fresh
tmpfs, switch into it and free this ramdisk."""

from __future__ import annotations

import os
import time

from agent import bootfiles, clocksync, cmdline, cpio, hwprobe, kmsg
from agent import protocol as p
from agent.config import AgentConfig
from agent.handoff import HANDOFF_PATH, Handoff
from agent.masterlink import MasterLink
from agent.net import nicdetect
from agent.net.network import NetworkState, bring_up_until_it_works
from agent.report import reporter, say
from agent.schema import Stage
from agent.system import syscalls
from stage2 import switchroot

NEW_ROOT = "/newroot"
MEMORY_REPORT = "/run/beoboot/stage2-memory.json"  # in the new root; stage 3 sends it to the master


def main(config: AgentConfig, *, dry_run: bool) -> None:
    """Stage 2's program: get on the network, then fetch stage 3 and switch into it."""
    dhcp_started = time.monotonic()
    net = bring_up_until_it_works(config, dry_run=dry_run, say=say)
    if net is not None:  # in a dry run nothing was configured, so nothing can be fetched
        run(config, net, dhcp_started=dhcp_started, dry_run=dry_run)


def run(config: AgentConfig, net: NetworkState, *, dhcp_started: float, dry_run: bool) -> None:
    master = net.master_url or ""
    mac = nicdetect.mac_text(net.interface)
    # the master sets this node's clock at registration (a dry run only measures: it runs on the build host)
    keeper = clocksync.ClockKeeper(None if dry_run else clocksync.set_wall_clock, log=say)
    link = MasterLink(master, mac, Stage.PXE, log=say, clock_keeper=keeper)
    link.event(p.BootEvent.STAGE2_START, at=dhcp_started)
    link.event(p.BootEvent.DHCP, f"{net.interface} {net.lease.cidr}", at=dhcp_started)
    reporter.attach(link)  # from here on every line also goes to the master
    kernel_log = None if dry_run else kmsg.ship(link.queue_log, say)  # and the kernel's, from its first
    say(f"beoboot: registering with the master {master}")
    link.register(hwprobe.probe())  # retries until the master answers
    pins = bootfiles.pins_from_cmdline(cmdline.read())
    manifest = bootfiles.fetch_manifest(master, "/tmp/manifest.json", say)
    syscalls.mount("tmpfs", NEW_ROOT, "tmpfs", 0, "mode=0755", dry_run=dry_run)
    link.event(p.BootEvent.DOWNLOAD)
    download = os.path.join(NEW_ROOT, f".{Stage.SUPERVISOR}.download")
    bootfiles.fetch(master, manifest, Stage.SUPERVISOR, download, pins, say, mac)
    started = time.monotonic()
    count = cpio.extract_image(download, NEW_ROOT)
    os.unlink(download)
    say(f"beoboot: unpacked stage 3: {count} entries in {time.monotonic() - started:.1f} s")
    kmsg_seq = kernel_log.stop() if kernel_log is not None else None  # stage 3 goes on after it
    handoff = Handoff(
        master,
        mac,
        net.interface,
        net.lease.cidr,
        {k: v for k, v in pins.items() if k == Stage.ENVROOT},
        {Stage.SUPERVISOR.value: bootfiles.expected(manifest, Stage.SUPERVISOR, pins)},
        server_id=net.lease.server_id,
        lease_seconds=net.lease.lease_seconds,
        renewal_seconds=net.lease.renewal_seconds,
        rebinding_seconds=net.lease.rebinding_seconds,
        lease_obtained_at=net.lease_obtained_at,
        kmsg_seq=kmsg_seq,
        dns=list(net.lease.dns),
    )
    os.makedirs(os.path.dirname(NEW_ROOT + HANDOFF_PATH), exist_ok=True)
    with open(NEW_ROOT + HANDOFF_PATH, "w") as f:
        f.write(handoff.to_json())
    link.event(p.BootEvent.SWITCH)
    link.flush(force=True)  # now: once the old root is deleted this process can import nothing more
    reporter.link = None
    env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "TERM": os.environ.get("TERM", "linux")}
    switchroot.switch_root(NEW_ROOT, "/init", ["/init"], env, log=say, dry_run=dry_run, memory_report=MEMORY_REPORT)
