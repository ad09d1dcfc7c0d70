"""The stages as data: `stages/NAME.toml` says what each image carries; this module reads and checks it.

What a stage *is* lives in stages/ (part of beoboot); what a *site* chooses (compression, budgets, which
drivers) lives in the build config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import values
from agent.schema import Stage
from beoboot.configfile import boolean, parse, read_toml, setting

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STAGES_DIR = PROJECT_ROOT / "stages"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
# The packages an image's Python comes from besides the sysroot's: what every image runs, and each stage's own
PROGRAM_PACKAGES = ("agent", "stage1", "stage2", "stage3")


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


def _paths(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of paths")
    return tuple(_absolute_path(v) for v in value)


def _program(value: object) -> str:
    """A module of the project's stage packages, e.g. "stage2.pxe": the image's /init imports it."""
    name = values.name(value, "a module name")
    package, _, module = name.partition(".")
    if not (
        package in PROGRAM_PACKAGES and module.isidentifier() and (PROJECT_ROOT / package / f"{module}.py").is_file()
    ):
        raise ValueError("a module of " + ", ".join(PROGRAM_PACKAGES) + ' with a main(), e.g. "stage2.pxe"')
    return name


def _overlay(value: object) -> Path:
    return PROJECT_ROOT / _relative_path(value)


@dataclass(frozen=True)
class TemplateFile:
    template: str = setting(_relative_path, "path under templates/")
    dest: str = setting(_absolute_path, "path in the image")


@dataclass(frozen=True)
class StageSpec:
    stage: Stage  # from the file's name, not in it
    description: str = setting(values.one_line, "what this stage does, in a line")
    # None: no agent, no Python (envroot)
    program: str | None = setting(_program, 'the agent\'s program module, e.g. "stage2.pxe"', None)
    nic_drivers: bool = setting(boolean, "the image carries the NIC drivers of [images.NAME] drivers", False)
    directories: tuple[str, ...] = setting(_paths, "empty directories made in the image", ())
    # so that the kernel has a console before devtmpfs is mounted
    devices: bool = setting(boolean, "/dev/console and /dev/null in the image", False)
    binaries: tuple[str, ...] = setting(_paths, "sysroot programs carried with their libraries", ())
    overlay: Path | None = setting(_overlay, "a project directory copied into the image", None)
    templates: tuple[TemplateFile, ...] = setting([TemplateFile], "files rendered from templates/", ())

    @property
    def number(self) -> int | None:
        return self.stage.number

    @property
    def file_name(self) -> str:
        return f"{self.stage.value}.cpio"


def load_stage(stage: Stage, directory: Path = STAGES_DIR) -> StageSpec:
    path = directory / f"{stage.value}.toml"
    return StageSpec(stage, **parse(StageSpec, read_toml(path, "stage declaration"), str(path)))


def all_stages() -> list[StageSpec]:
    return [load_stage(stage) for stage in Stage]
