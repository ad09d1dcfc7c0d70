"""The stages: one Stage (agent.schema) for the builder, the agent and the master, and every fact about a
stage declared in stages/NAME.toml, read by beoboot.stages alone."""

import ast
import re
from pathlib import Path

import pytest

from agent import protocol as p
from agent.schema import KERNEL, Stage
from beoboot import stages
from beoboot.errors import ConfigError
from beoboot.image.compress import Compression
from beoboot.stages import load_stage

ROOT = Path(__file__).resolve().parent.parent


def test_one_stage_in_boot_order():
    assert p.Stage is Stage and stages.Stage is Stage
    assert [s.value for s in Stage] == ["stage1", "stage2", "stage3", "envroot"]
    assert [s.order for s in Stage] == [0, 1, 2, 3]
    assert [s.number for s in Stage] == [1, 2, 3, None]
    assert Stage.with_agent() == (Stage.BOOSTER, Stage.PXE, Stage.SUPERVISOR)
    assert [s.stage for s in stages.all_stages()] == list(Stage)


def test_a_node_reports_only_the_stages_that_run_the_agent():
    for stage in Stage.with_agent():
        assert p.from_json(p.Heartbeat, p.to_json(p.Heartbeat("52:54:00:12:34:56", stage))).stage is stage
    with pytest.raises(p.ProtocolError, match="'envroot' is not one of stage1, stage2, stage3"):
        p.from_json(p.Heartbeat, '{"mac": "52:54:00:12:34:56", "stage": "envroot"}')


def test_pins_are_what_a_stage_fetches_and_hands_on():
    assert {stage.value: stages.pins(stage) for stage in Stage} == {
        "stage1": ("kernel", "stage2", "stage3", "envroot"),  # stage 1 hands the last two on to stage 2
        "stage2": ("stage3", "envroot"),  # stage 2 hands envroot on to stage 3
        "stage3": ("envroot",),
        "envroot": (),
    }


def test_the_declared_facts():
    assert stages.stages_booted_from("iso") == (Stage.BOOSTER, Stage.PXE)
    assert stages.stage_booted_from("pxe") is Stage.PXE and stages.stage_booted_from("floppy") is Stage.BOOSTER
    unpackers = {s.stage.value: (s.unpacker, s.compressions) for s in stages.all_stages()}
    assert unpackers == {
        "stage1": ("the kernel", tuple(Compression)),
        "stage2": ("the kernel", tuple(Compression)),
        "stage3": ("stage 2's agent", (Compression.GZIP, Compression.NONE)),
        "envroot": ("stage 3's agent", (Compression.GZIP, Compression.NONE)),
    }
    assert [s.stage for s in stages.all_stages() if s.formats_libcache_disk] == [Stage.SUPERVISOR]
    assert stages.colours() == {"stage1": "#4e79a7", "stage2": "#f28e2b", "stage3": "#59a14f"}
    assert stages.PROGRAM_PACKAGES == ("agent", "stage1", "stage2", "stage3")
    # the libcache lives in the environment root's own mount (stage3.libcache), not in stage 3's image
    assert not [d for d in stages.declared(Stage.SUPERVISOR).directories if "libcache" in d]


@pytest.mark.parametrize(
    "text, key",
    [
        ('fetches = ["stage1"]', "fetches"),  # an earlier stage: the boot only goes forward
        ('fetches = ["stage3", "stage3"]', "fetches"),
        ('fetches = "stage3"', "fetches"),
        ('unpacked_by = "stage9"', "unpacked_by"),
        ('unpacked_by = "envroot"', "unpacked_by"),  # it runs no agent
        ('compressions = ["bzip2"]', "compressions"),
        ('boots_from = ["tape"]', "boots_from"),
        ('colour = "red"', "colour"),
        ('formats_libcache_disk = "yes"', "formats_libcache_disk"),
    ],
)
def test_stage_file_facts_are_checked(tmp_path, text, key):
    (tmp_path / "stage2.toml").write_text(f'description = "x"\n{text}\n')
    with pytest.raises(ConfigError, match=re.escape(f"stage2.toml: {key}")):
        load_stage(Stage.PXE, tmp_path)


SIMULATOR_MODULES = {"simnode.py", "simfleet.py"}


def _fetched(module: Path) -> set[str]:
    """The names a program module passes to bootfiles.fetch(), evaluated against the schema."""
    names = {"Stage": Stage, "KERNEL": KERNEL}
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fetch":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "bootfiles":
                found.add(str(eval(compile(ast.Expression(node.args[2]), str(module), "eval"), names)))
    return found


@pytest.mark.parametrize("stage", list(Stage))
def test_each_program_fetches_what_its_stage_declares(stage):
    spec = stages.declared(stage)
    package = ROOT / spec.program.partition(".")[0] if spec.program else None
    # the simulator runs on the master and plays a whole node's part, stage 2's downloads too: not in an image
    modules = [m for m in package.glob("*.py") if m.name not in SIMULATOR_MODULES] if package else []
    fetched = set().union(*(_fetched(m) for m in modules))
    assert fetched == set(spec.fetches)


def test_the_engine_names_no_stage():
    """beoboot/ asks beoboot.stages; a string that is a stage's name is a stage fact declared outside it."""
    names = {s.value for s in Stage}
    found = []
    for module in sorted((ROOT / "beoboot").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{module.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []
