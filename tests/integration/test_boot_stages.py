"""Each stage image boots with the real kernel under QEMU (TCG) to its agent, which says it is up."""

import json

import pytest

from beoboot.vm import qemu

pytestmark = pytest.mark.integration

# `beoboot.smoke`: the agent prints its marker and powers off instead of doing the stage's work
SMOKE_APPEND = qemu.DEFAULT_APPEND + " beoboot.smoke"


@pytest.mark.parametrize("stage, number", [("stage1", 1), ("stage2", 2), ("stage3", 3)])
def test_stage_boots_to_its_agent_and_powers_off(built, stage, number):
    manifest = json.loads((built / "manifest.json").read_text())
    image = built / next(a["path"] for a in manifest["artifacts"] if a["name"] == stage)
    # no patterns: run until the guest powers off (QEMU exits with -no-reboot) or the time is up
    result = qemu.run(qemu.qemu_command(built / "vmlinuz", image, SMOKE_APPEND), expect=[], timeout=240)
    console = result.console
    assert f"beoboot: stage {number} agent up" in console, console[-4000:]
    assert "beoboot: agent version 0." in console
    assert "beoboot: powering off" in console
    assert "Kernel panic" not in console
    assert result.exit_code == 0, console[-2000:]
