"""The stages as data: `stages/NAME.toml` says what each image is; this module reads and checks it.

What a stage *is* lives in stages/ (part of beoboot); what a *site* chooses (compression, budgets, which
drivers) lives in the build config. The rest of the engine asks this module, and names no stage itself:
which stage the PXE tree boots, what pins a command line carries, what compression an image allows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from agent import values
from agent.schema import KERNEL, Stage
from beoboot.configfile import boolean, checked, parse, read_toml, setting
from beoboot.errors import ConfigError
from beoboot.image.compress import Compression

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STAGES_DIR = PROJECT_ROOT / "stages"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
# The packages an image's Python comes from besides the sysroot's: what every image runs, and each stage's own
# (the directory named after the stage, where it has one)
PROGRAM_PACKAGES = ("agent", *(stage.value for stage in Stage if (PROJECT_ROOT / stage / "__init__.py").is_file()))
# What beoboot.artifacts boots a stage from: the ISO ([artifacts] iso_stage chooses among the stages it can
# boot), the floppy, the PXE tree
MEDIA = ("iso", "floppy", "pxe")
UNPACKED_BY_KERNEL = "kernel"


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


def _names(value: object, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(v in allowed for v in value) or len(set(value)) != len(value):
        raise ValueError(f"a list of {what}, each once: " + ", ".join(allowed))
    return tuple(str(v) for v in value)


def _fetches(value: object) -> tuple[str, ...]:
    return _names(value, (KERNEL, *Stage), "what the stage downloads")


def _unpacker(value: object) -> Stage | None:
    agents = [s.value for s in Stage.with_agent()]
    if value == UNPACKED_BY_KERNEL:
        return None
    if value not in agents:
        raise ValueError(f'"{UNPACKED_BY_KERNEL}" or the stage whose agent unpacks the image: ' + ", ".join(agents))
    return Stage(value)


def _compressions(value: object) -> tuple[Compression, ...]:
    return tuple(map(Compression, _names(value, tuple(Compression), "compressions")))


def _media(value: object) -> tuple[str, ...]:
    return _names(value, MEDIA, "media")


def _colour(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"#[0-9a-f]{6}", value):
        raise ValueError('an RGB colour such as "#4e79a7"')
    return value


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
    # the pins its command line carries follow: see pins()
    fetches: tuple[str, ...] = setting(_fetches, "what its program downloads from the master, each pinned", ())
    unpacked_by: Stage | None = setting(_unpacker, '"kernel", or the stage whose agent unpacks its image', None)
    compressions: tuple[Compression, ...] = setting(_compressions, "what its unpacker reads", tuple(Compression))
    boots_from: tuple[str, ...] = setting(_media, "the media that boot it: " + ", ".join(MEDIA), ())
    colour: str | None = setting(_colour, "its phases in a boot timeline", None)
    formats_libcache_disk: bool = setting(boolean, "it formats a blank [build] libcache_disk: carries mke2fs", False)

    @property
    def number(self) -> int | None:
        return self.stage.number

    @property
    def unpacker(self) -> str:
        """Who unpacks its image, in words: "the kernel", "stage 2's agent"."""
        return "the kernel" if self.unpacked_by is None else f"stage {self.unpacked_by.number}'s agent"

    @property
    def file_name(self) -> str:
        return f"{self.stage.value}.cpio"


def load_stage(stage: Stage, directory: Path = STAGES_DIR) -> StageSpec:
    path = directory / f"{stage.value}.toml"
    spec = StageSpec(stage, **parse(StageSpec, read_toml(path, "stage declaration"), str(path)))
    checked(str(path), "fetches", list(spec.fetches), _after, stage)
    return spec


def _after(fetches: list[str], stage: Stage) -> None:
    """The boot only goes forward: a stage fetches the kernel and stages after it."""
    allowed = (KERNEL, *(s for s in Stage if s.order > stage.order))
    if not all(name in allowed for name in fetches):
        raise ValueError("a list of what the stage downloads: " + ", ".join(allowed))


@functools.cache
def all_stages() -> tuple[StageSpec, ...]:
    """Every stage, in boot order (the order they are built and listed in the manifest)."""
    return tuple(load_stage(stage) for stage in Stage)


def declared(stage: Stage) -> StageSpec:
    return all_stages()[Stage(stage).order]


def pins(stage: Stage) -> tuple[str, ...]:
    """The images whose sha256 `stage`'s command line carries (`beoboot.pin.NAME`): what it fetches, each
    followed by the pins of the stage fetched, which it hands on (stage 1 to stage 2 on the kexec command
    line, stage 2 to stage 3 in the handoff)."""
    out: list[str] = []
    for name in declared(stage).fetches:
        out += [name, *(pins(Stage(name)) if name != KERNEL else ())]
    return tuple(dict.fromkeys(out))


def stages_booted_from(medium: str) -> tuple[Stage, ...]:
    """The stages `medium` (one of MEDIA) can boot, in boot order."""
    return tuple(s.stage for s in all_stages() if medium in s.boots_from)


def stage_booted_from(medium: str) -> Stage:
    """The one stage `medium` boots."""
    found = stages_booted_from(medium)
    if len(found) != 1:
        raise ConfigError(
            f"{STAGES_DIR}: {len(found)} stages boot from {medium} ({', '.join(found) or 'none'})",
            hint=f"boots_from = [..., {medium!r}] in exactly one stage file",
        )
    return found[0]


def colours() -> dict[str, str]:
    """Stage name -> its colour in a boot timeline, for the stages that declare one."""
    return {s.stage.value: s.colour for s in all_stages() if s.colour is not None}
