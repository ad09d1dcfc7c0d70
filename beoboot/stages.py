"""The stages as data: `stages/NAME.toml` says what each image carries; this module reads and checks it.

What a stage *is* lives in stages/ (part of beoboot); what a *site* chooses (compression, budgets, which
drivers) lives in the build config.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import values
from beoboot.configfile import checked, read_toml, shown
from beoboot.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STAGES_DIR = PROJECT_ROOT / "stages"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
# The packages an image's Python comes from besides the sysroot's: what every image runs, and each stage's own
PROGRAM_PACKAGES = ("agent", "stage1", "stage2", "stage3")


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
    program: str | None  # the agent's program module ("stage2.pxe"); None: no agent, no Python (envroot)
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


_KEYS = {"description", "program", "nic_drivers", "directories", "devices", "binaries", "overlay", "templates"}
_TEMPLATE_KEYS = {"template", "dest"}


def _absolute_path(value: object) -> str:
    path = values.name(value, "an absolute path in the image")
    if not path.startswith("/") or ".." in path.split("/"):
        raise ValueError("an absolute path in the image, without ..")
    return path


def _relative_path(value: object) -> str:
    """A path inside the project (overlay) or templates/: relative, never out of it."""
    path = values.name(value, "a relative path")
    if path.startswith("/") or ".." in path.split("/"):
        raise ValueError("a relative path, without ..")
    return path


def _paths(value: object, each: Callable[[object], str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of paths")
    return tuple(each(v) for v in value)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _program(value: object) -> str:
    """A module of the project's stage packages, e.g. "stage2.pxe": the image's /init imports it."""
    name = values.name(value, "a module name")
    package, _, module = name.partition(".")
    if not (
        package in PROGRAM_PACKAGES and module.isidentifier() and (PROJECT_ROOT / package / f"{module}.py").is_file()
    ):
        raise ValueError("a module of " + ", ".join(PROGRAM_PACKAGES) + ' with a main(), e.g. "stage2.pxe"')
    return name


def _templates(value: object, origin: str) -> tuple[TemplateFile, ...]:
    if not isinstance(value, list):
        raise ConfigError(
            f"{origin}: templates = {shown(value)} is not allowed: expected a list of tables "
            "{ template = PATH, dest = PATH }"
        )
    out = []
    for index, table in enumerate(value):
        key = f"templates[{index}]"
        if not isinstance(table, dict) or set(table) != _TEMPLATE_KEYS:
            raise ConfigError(
                f"{origin}: {key} = {shown(table)} is not allowed: expected a table "
                "{ template = PATH under templates/, dest = PATH in the image }"
            )
        out.append(
            TemplateFile(
                template=checked(origin, f"{key}.template", table["template"], _relative_path),
                dest=checked(origin, f"{key}.dest", table["dest"], _absolute_path),
            )
        )
    return tuple(out)


def load_stage(stage: Stage, directory: Path = STAGES_DIR) -> StageSpec:
    path = directory / f"{stage.value}.toml"
    origin = str(path)
    raw = read_toml(path, "stage declaration")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}", hint="allowed: " + ", ".join(sorted(_KEYS)))
    if "description" not in raw:
        raise ConfigError(f"{path}: description is missing", hint='add description = "what this stage does"')
    program = raw.get("program")
    overlay = raw.get("overlay")
    return StageSpec(
        stage=stage,
        description=checked(origin, "description", raw["description"], values.one_line),
        program=None if program is None else checked(origin, "program", program, _program),
        nic_drivers=checked(origin, "nic_drivers", raw.get("nic_drivers", False), _bool),
        directories=checked(origin, "directories", raw.get("directories", []), _paths, _absolute_path),
        devices=checked(origin, "devices", raw.get("devices", False), _bool),
        binaries=checked(origin, "binaries", raw.get("binaries", []), _paths, _absolute_path),
        overlay=None if overlay is None else PROJECT_ROOT / checked(origin, "overlay", overlay, _relative_path),
        templates=_templates(raw.get("templates", []), origin),
    )


def all_stages() -> list[StageSpec]:
    return [load_stage(stage) for stage in Stage]
