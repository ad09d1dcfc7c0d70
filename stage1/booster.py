"""Stage 1, the booster: get on the network, fetch the stage-2 kernel and ramdisk, check them against
their pins, and kexec into them (Becker's "Two Kernel Monte")."""

from __future__ import annotations

import time

from agent import bootfiles, cmdline, hwprobe
from agent import protocol as p
from agent.config import AgentConfig
from agent.masterlink import MasterLink
from agent.net import nicdetect
from agent.net.network import NetworkState, bring_up_until_it_works
from agent.report import reporter, say
from agent.schema import KERNEL, Stage
from stage1 import kexec

# What stage 1 itself used up, and the boot loader's own words about stage 1's files; stage 2 gets the
# rest of the command line (console, master, the pins of what it and stage 3 fetch).
CONSUMED_WORDS = (f"beoboot.pin.{KERNEL}=", f"beoboot.pin.{Stage.PXE}=", "BOOT_IMAGE=", "initrd=")


def next_cmdline(own: str, master: str) -> str:
    words = [w for w in own.split() if not w.startswith(CONSUMED_WORDS) and not w.startswith("beoboot.master=")]
    return " ".join([*words, f"beoboot.master={master}"])


def main(config: AgentConfig, *, dry_run: bool) -> None:
    """Stage 1's program: get on the network, then fetch stage 2 and kexec into it."""
    net = bring_up_until_it_works(config, dry_run=dry_run, say=say)
    if net is not None:  # in a dry run nothing was configured, so nothing can be fetched
        run(config, net, dry_run=dry_run)


def run(config: AgentConfig, net: NetworkState, *, dry_run: bool) -> None:
    started = time.monotonic()
    master = net.master_url or ""
    link = MasterLink(master, nicdetect.mac_text(net.interface), Stage.BOOSTER, log=say)
    reporter.attach(link)
    link.register(hwprobe.probe())
    link.event(p.BootEvent.STAGE1_START, at=started)
    pins = bootfiles.pins_from_cmdline(cmdline.read())
    manifest = bootfiles.fetch_manifest(master, "/tmp/manifest.json", say)
    kernel = bootfiles.fetch(master, manifest, KERNEL, "/tmp/vmlinuz", pins, say)
    initrd = bootfiles.fetch(master, manifest, Stage.PXE, f"/tmp/{Stage.PXE}.img", pins, say)
    with open(cmdline.PROC_CMDLINE) as f:
        command_line = next_cmdline(f.read(), master)
    say(f"beoboot: kexec into the stage 2 kernel at uptime {hwprobe.uptime() or 0:.1f} s: {command_line}")
    say(f"beoboot: {kexec.load(kernel, initrd, command_line, dry_run=dry_run)}")
    link.event(p.BootEvent.KEXEC)
    link.flush(force=True)
    kexec.execute(dry_run=dry_run)
