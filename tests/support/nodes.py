"""Booted and asked-about nodes for the tests: a PXE-booted QEMU node, and bpstat's view of one."""

import json
import subprocess
import sys
from contextlib import contextmanager

from vm import BackgroundVM

from beoboot import config
from beoboot.artifacts import media
from beoboot.vm import qemu


def stage2_node(out, tmp_path, name="node", mac="52:54:00:12:34:56", nic="virtio-net-pci", reboot=False, extra=()):
    """A PXE-booted node, as pxelinux would start it: the stage-2 kernel, ramdisk and command line."""
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = {a["name"]: a["sha256"] for a in manifest["artifacts"]}
    append = media.kernel_cmdline(config.load(), "stage2", hashes).replace("console=ttyS0,115200", "console=ttyS0")
    append = append.replace("beoboot.master=http://10.0.2.2:8080/", "")  # the built-in master URL is the site's
    cmd = qemu.qemu_command(
        out / "vmlinuz",
        out / next(a["path"] for a in manifest["artifacts"] if a["name"] == "stage2"),
        append,
        reboot=reboot,
        extra=["-nic", f"user,model={nic},mac={mac}", *extra],
    )
    return BackgroundVM(cmd, tmp_path / f"{name}.console")


@contextmanager
def node_up(out, port, work, extra=()):
    """beoserv on `out` at `port`, and one node PXE-booted from it with QEMU's `extra` arguments, until its
    job link is up: (master, vm). Both are stopped after."""
    from master_helpers import MasterProcess

    master = MasterProcess(out, work / "nodes.db", work / "beoserv.log", port=port).start()
    try:
        with stage2_node(out, work, extra=extra) as vm:
            vm.wait_for("beoboot: stage 3 ready: node 0 up")
            master.wait_for_log(r"node 0 \(\S+\) job link up", timeout=60)
            yield master, vm
    finally:
        master.stop()


def bpstat(master, *args):
    result = subprocess.run(
        [sys.executable, "-m", "beoboot.master.cli", "bpstat", "--master", master.url, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def node_row(master, number):
    return next(n for n in json.loads(bpstat(master, "--json")) if n["number"] == number)
