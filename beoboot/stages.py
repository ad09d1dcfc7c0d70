"""The stages as data: `stages/NAME.toml` says what each image carries; this module reads and checks it.

What a stage *is* lives in stages/ (part of beoboot); what a *site* chooses (compression, budgets, which
drivers) lives in the build config.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass
from pathlib import Path

from beoboot.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STAGES_DIR = PROJECT_ROOT / "stages"
TEMPLATES_DIR = PROJECT_ROOT / "templates"


class Stage(enum.StrEnum):
    BOOSTER = "stage1"
    PXE = "stage2"
    SUPERVISOR = "stage3"
    ENVROOT = "envroot"


@dataclass(frozen=True)
class TemplateFile:
    template: str  # path under templates/
    dest: str  # archive path


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    description: str
    agent_role: str | None  # None: no agent and no Python (the environment root)
    nic_drivers: bool
    directories: tuple[str, ...]
    devices: bool  # /dev/console and /dev/null, so the kernel has a console before devtmpfs is mounted
    binaries: tuple[str, ...]
    overlay: Path | None
    templates: tuple[TemplateFile, ...]

    @property
    def number(self) -> int | None:
        return {Stage.BOOSTER: 1, Stage.PXE: 2, Stage.SUPERVISOR: 3}.get(self.stage)

    @property
    def file_name(self) -> str:
        return f"{self.stage.value}.cpio"


_KEYS = {"description", "agent_role", "nic_drivers", "directories", "devices", "binaries", "overlay", "templates"}


def load_stage(stage: Stage, directory: Path = STAGES_DIR) -> StageSpec:
    path = directory / f"{stage.value}.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"stage declaration {path}: {exc}") from None
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}", hint="allowed: " + ", ".join(sorted(_KEYS)))
    overlay = raw.get("overlay")
    return StageSpec(
        stage=stage,
        description=raw["description"],
        agent_role=raw.get("agent_role"),
        nic_drivers=bool(raw.get("nic_drivers", False)),
        directories=tuple(raw.get("directories", ())),
        devices=bool(raw.get("devices", False)),
        binaries=tuple(raw.get("binaries", ())),
        overlay=PROJECT_ROOT / overlay if overlay else None,
        templates=tuple(TemplateFile(**t) for t in raw.get("templates", ())),
    )


def all_stages() -> list[StageSpec]:
    return [load_stage(stage) for stage in Stage]
