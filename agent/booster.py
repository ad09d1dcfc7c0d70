"""Stage 1, the booster: get on the network, fetch the stage-2 kernel and ramdisk, check them against
their pins, and kexec into them (Becker's "Two Kernel Monte")."""

from __future__ import annotations

import time

from agent import bootfiles, cmdline, hwprobe, kexec, nicdetect
from agent import protocol as p
from agent.config import AgentConfig
from agent.masterlink import MasterLink
from agent.network import NetworkState
from agent.report import reporter, say

# What stage 1 itself used up, and the boot loader's own words about stage 1's files; stage 2 gets the
# rest of the command line (console, master, the pins of what it and stage 3 fetch).
CONSUMED_WORDS = ("beoboot.pin.kernel=", "beoboot.pin.stage2=", "BOOT_IMAGE=", "initrd=")


def next_cmdline(own: str, master: str) -> str:
    words = [w for w in own.split() if not w.startswith(CONSUMED_WORDS) and not w.startswith("beoboot.master=")]
    return " ".join([*words, f"beoboot.master={master}"])


def run(config: AgentConfig, net: NetworkState, *, dry_run: bool) -> None:
    started = time.monotonic()
    master = net.master_url or ""
    link = MasterLink(master, nicdetect.mac_text(net.interface), p.Stage.BOOSTER, log=say)
    reporter.attach(link)
    link.register(hwprobe.probe())
    link.event(p.BootEvent.STAGE1_START, at=started)
    pins = bootfiles.pins_from_cmdline(cmdline.read())
    manifest = bootfiles.fetch_manifest(master, "/tmp/manifest.json", say)
    kernel = bootfiles.fetch(master, manifest, "kernel", "/tmp/vmlinuz", pins, say)
    initrd = bootfiles.fetch(master, manifest, "stage2", "/tmp/stage2.img", pins, say)
    with open(cmdline.PROC_CMDLINE) as f:
        command_line = next_cmdline(f.read(), master)
    say(f"beoboot: kexec into the stage 2 kernel at uptime {hwprobe.uptime() or 0:.1f} s: {command_line}")
    say(f"beoboot: {kexec.load(kernel, initrd, command_line, dry_run=dry_run)}")
    link.event(p.BootEvent.KEXEC)
    link.flush(force=True)
    kexec.execute(dry_run=dry_run)
