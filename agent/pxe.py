"""Stage 2, the PXE ramdisk: log to the master at once, fetch stage 3 (pinned), unpack it into a fresh
tmpfs, switch into it and free this ramdisk."""

from __future__ import annotations

import gzip
import os
import time

from agent import bootfiles, cmdline, cpio, hwprobe, nicdetect, switchroot, syscalls
from agent import protocol as p
from agent.config import AgentConfig
from agent.handoff import HANDOFF_PATH, Handoff
from agent.masterlink import MasterLink
from agent.network import NetworkState
from agent.report import reporter, say

NEW_ROOT = "/newroot"
MEMORY_REPORT = "/run/beoboot/stage2-memory.json"  # in the new root; stage 3 sends it to the master
GZIP_MAGIC = b"\x1f\x8b"


def unpack(image: str, root: str) -> int:
    """Unpack a gzip-compressed or plain cpio image (what [images.stage3] compression allows)."""
    with open(image, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    with opener(image, "rb") as stream:
        return cpio.extract(stream, root)


def run(config: AgentConfig, net: NetworkState, *, dhcp_started: float, dry_run: bool) -> None:
    master = net.master_url or ""
    mac = nicdetect.mac_text(net.interface)
    link = MasterLink(master, mac, p.Stage.PXE, log=say)
    link.event(p.BootEvent.STAGE2_START, at=dhcp_started)
    link.event(p.BootEvent.DHCP, f"{net.interface} {net.lease.cidr}", at=dhcp_started)
    reporter.attach(link)  # from here on every line also goes to the master
    say(f"beoboot: registering with the master {master}")
    link.register(hwprobe.probe())  # retries until the master answers
    pins = bootfiles.pins_from_cmdline(cmdline.read())
    manifest = bootfiles.fetch_manifest(master, "/tmp/manifest.json", say)
    syscalls.mount("tmpfs", NEW_ROOT, "tmpfs", 0, "mode=0755", dry_run=dry_run)
    link.event(p.BootEvent.DOWNLOAD)
    download = os.path.join(NEW_ROOT, ".stage3.download")
    bootfiles.fetch(master, manifest, "stage3", download, pins, say)
    started = time.monotonic()
    count = unpack(download, NEW_ROOT)
    os.unlink(download)
    say(f"beoboot: unpacked stage 3: {count} entries in {time.monotonic() - started:.1f} s")
    handoff = Handoff(
        master,
        mac,
        net.interface,
        net.lease.cidr,
        {k: v for k, v in pins.items() if k == "envroot"},
        server_id=net.lease.server_id,
        lease_seconds=net.lease.lease_seconds,
        renewal_seconds=net.lease.renewal_seconds,
        rebinding_seconds=net.lease.rebinding_seconds,
        lease_obtained_at=net.lease_obtained_at,
    )
    os.makedirs(os.path.dirname(NEW_ROOT + HANDOFF_PATH), exist_ok=True)
    with open(NEW_ROOT + HANDOFF_PATH, "w") as f:
        f.write(handoff.to_json())
    link.event(p.BootEvent.SWITCH)
    link.flush(force=True)  # now: once the old root is deleted this process can import nothing more
    reporter.link = None
    env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "TERM": os.environ.get("TERM", "linux")}
    switchroot.switch_root(NEW_ROOT, "/init", ["/init"], env, log=say, dry_run=dry_run, memory_report=MEMORY_REPORT)
