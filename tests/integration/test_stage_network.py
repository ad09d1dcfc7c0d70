"""Stage 2 under QEMU (TCG) with each common NIC model: the agent loads the right driver, gets a lease from
QEMU's user-mode DHCP (10.0.2.15, router 10.0.2.2) and powers off (`beoboot.smoke=network`)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_beoboot

from beoboot.vm import qemu

pytestmark = pytest.mark.integration

NETWORK_SMOKE = qemu.DEFAULT_APPEND + " beoboot.smoke=network"
BOOT_TIMEOUT = 120


def _image(outdir, stage):
    manifest = json.loads((outdir / "manifest.json").read_text())
    return outdir / next(a["path"] for a in manifest["artifacts"] if a["name"] == stage)


def _boot(outdir, model, append=NETWORK_SMOKE):
    result = qemu.boot(
        outdir / "vmlinuz",
        _image(outdir, "stage2"),
        [],
        append=append,
        timeout=BOOT_TIMEOUT,
        extra=["-nic", f"user,model={model}"],
    )
    print(f"stage2 with {model}: {result.seconds:.1f} s")
    return result


# One boot per model. The virtio boot also names its master on the command line, which wins over the one
# DHCP gives (a boot of its own for that cost 13 s of the suite): the others show DHCP's.
COMMAND_LINE_MASTER = "http://10.0.2.2:9999/"


@pytest.mark.parametrize(
    "model, ids, driver, master",
    [
        ("e1000", "8086:100e", "e1000", None),
        ("e1000e", "8086:10d3", "e1000e", None),
        ("virtio-net-pci", "1af4:1000", "virtio_net (via virtio_pci)", COMMAND_LINE_MASTER),
        ("rtl8139", "10ec:8139", "8139cp", None),  # QEMU's RTL8139 is a C+ chip (rev 0x20): 8139cp, not 8139too
    ],
)
def test_stage2_loads_the_driver_and_gets_a_lease(built, model, ids, driver, master):
    result = _boot(built, model, NETWORK_SMOKE + (f" beoboot.master={master}" if master else ""))
    console = result.console
    assert f"-> {driver}\r\n" in console or f"-> {driver}\n" in console, console[-3000:]
    assert f" {ids} -> {driver}" in console
    lease = f"beoboot: dhcp eth0 10.0.2.15/24 router 10.0.2.2 master {master or 'http://10.0.2.2:8080/'}"
    assert lease in console, console[-3000:]
    assert "beoboot: powering off" in console and "agent failed" not in console
    assert result.exit_code == 0, console[-2000:]


def test_a_nic_without_a_driver_is_named_not_waited_for(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[images.stage2]\ndrivers = ["e1000"]\n')
    outdir = tmp_path / "out"
    run_beoboot("build", "-q", "-c", site, "-o", outdir)
    result = _boot(outdir, "rtl8139")
    console = result.console
    assert "beoboot: nic 0000:00:01.0 10ec:8139 (class 020000) has no driver in this image" in console, console[-3000:]
    assert "beoboot-build nics --check" in console
    assert "beoboot: agent failed: no network card of this node has a driver in the image" in console
    assert "beoboot: powering off" in console and result.exit_code == 0


def test_stage2_with_the_drivers_of_an_lspci_dump_boots_that_nic(tmp_path):
    """A site names its hardware with `lspci -n`; stage 2 carries those drivers only, and boots."""
    shutil.copy(Path(__file__).parents[1] / "data" / "lspci-qemu-e1000.txt", tmp_path / "nodes-lspci.txt")
    site = tmp_path / "site.toml"
    site.write_text('[images.stage2]\ndrivers = "lspci:nodes-lspci.txt"\nbudget = "5M"\n')
    outdir = tmp_path / "out"
    run_beoboot("build", "-q", "-c", site, "-o", outdir)
    manifest = json.loads((outdir / "manifest.json").read_text())
    modules = sorted(Path(r["path"]).name for r in manifest["images"]["stage2"] if r["path"].endswith(".ko"))
    assert modules == ["e1000.ko"]
    result = _boot(outdir, "e1000")
    console = result.console
    assert " 8086:100e -> e1000" in console, console[-3000:]
    assert "beoboot: dhcp eth0 10.0.2.15/24 router 10.0.2.2" in console, console[-3000:]
    assert "beoboot: powering off" in console and result.exit_code == 0
