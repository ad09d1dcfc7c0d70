"""The build config: a table of settings drives the TOML file, validation, defaults and `beoboot-build config`.

A finished Config is frozen and round-trips through JSON (a test proves it). What changes during a build
lives in beoboot.image.builder, never here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from agent import cmdline, values
from agent.config import LIBCACHE_FORMATS, MKE2FS_FSTYPES
from beoboot.configfile import checked, parse_toml, read_toml, shown
from beoboot.errors import ConfigError
from beoboot.image.compress import Compression

IMAGE_NAMES = ("stage1", "stage2", "stage3", "envroot")
DEFAULT_CONFIG_NAME = "<embedded default config>"


# -- value parsers: each takes the raw TOML value and returns the typed value, or raises ValueError
#    with a sentence that says what is allowed. agent.values checks a value for where it ends up (one
#    line of a generated file, one kernel command-line word, a URL, a finite number of seconds).


def parse_path(value: Any) -> str:
    return values.one_line(value, "a path")


def parse_kernel(value: Any) -> str:
    """ "auto" or a version: one directory name under /lib/modules."""
    if isinstance(value, str) and "/" not in value and value not in (".", ".."):
        return values.name(value, 'a kernel version (a directory name in /lib/modules) or "auto"')
    raise ValueError('a kernel version (a directory name in /lib/modules) or "auto"')


def parse_epoch(value: Any) -> int:
    return values.epoch(value)


def parse_master_timeout(value: Any) -> float:
    return values.number(value, 1, 86400, "a number of seconds")


def parse_url(value: Any) -> str:
    value = values.http_url(value)
    return value if value.endswith("/") else value + "/"


def parse_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of non-empty strings")
    return tuple(values.name(v, "a list of non-empty names without spaces") for v in value)


def parse_drivers(value: Any) -> tuple[str, ...]:
    """ "all" (every PCI ethernet driver of the kernel) or a list of module names / glob patterns."""
    if value == "all":
        return ("all",)
    try:
        return parse_names(value)
    except ValueError:
        raise ValueError('"all" or a list of module names or glob patterns') from None


def parse_compression(value: Any) -> Compression:
    try:
        return Compression(value)
    except (ValueError, TypeError):  # TypeError: a list or table is not hashable
        raise ValueError("one of " + ", ".join(c.value for c in Compression)) from None


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return parse


def parse_floppy_kib(value: Any) -> int:
    if isinstance(value, bool) or value not in (1440, 2880):
        raise ValueError("1440 or 2880 (KiB)")
    return value


def parse_node_range(value: Any) -> str:
    from beoboot.artifacts.pxe import parse_node_range as parse

    expected = 'an address range "FIRST-LAST/PREFIX", e.g. "10.0.2.100-10.0.2.199/24"'
    text = values.one_line(value, expected)
    if not text.isascii():  # int() reads other scripts' digits as a prefix length: say no before it does
        raise ValueError(expected)
    try:
        parse(text)
    except Exception:  # noqa: BLE001 -- any parse failure is the same wrong value to the user
        raise ValueError(expected) from None
    return text


def parse_interface(value: Any) -> str:
    return values.interface(value)


def parse_console(value: Any) -> str:
    return values.kernel_word(value, 'one kernel command-line word such as "ttyS0,115200"')


def parse_words(value: Any) -> str:
    words = values.kernel_words(value)
    try:  # a beoboot.* word the agent would refuse at boot is refused now
        cmdline.parse(words, "append")
    except cmdline.CmdlineError as exc:
        raise ValueError(f"words the agent accepts ({exc.args[0]})") from None
    return words


SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
MAX_SIZE = 1 << 50  # 1 PiB: past any image budget or node disk, and well inside a 64-bit field


def parse_disk(value: Any) -> str:
    """ "" (none: RAM) or a block device path."""
    if value == "" or (isinstance(value, str) and value.startswith("/dev/") and len(value) > 5):
        return value if value == "" else values.name(value, "a block device path")
    raise ValueError('"" (the environment root in RAM) or a block device such as "/dev/vdb"')


def parse_fstype(value: Any) -> str:
    if isinstance(value, str) and value.isascii() and value.replace("_", "").isalnum() and len(value) <= 32:
        return value
    raise ValueError('a filesystem type the node kernel mounts, such as "ext4" or "xfs"')


def parse_size(value: Any) -> int:
    """A byte count: 5000000, "48M", "512K", "1G"."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and len(value) <= 20:
        number, unit = value[:-1], value[-1:].upper()
        if unit not in SIZE_UNITS or not unit:
            number, unit = value, ""
        if number.isascii() and number.isdigit():
            size = int(number) * SIZE_UNITS[unit]
    if size is None or not 0 < size <= MAX_SIZE:
        raise ValueError('a size in bytes, or with a unit: "512K", "48M", "1G"; more than 0, at most 1 PiB')
    return size


@dataclass(frozen=True)
class Setting:
    section: str  # "build", or "images" for a key every [images.NAME] table has
    key: str
    parse: Callable[[Any], Any]
    help: str


SETTINGS = (
    Setting("build", "sysroot", parse_path, "the reference install the images are built from"),
    Setting("build", "kernel", parse_kernel, 'kernel version in SYSROOT/lib/modules, or "auto"'),
    Setting("build", "source_date_epoch", parse_epoch, "mtime of every file in every image"),
    Setting("build", "master_url", parse_url, "where nodes find the master"),
    Setting("build", "master_timeout", parse_master_timeout, "seconds without the master before a node reboots"),
    Setting("build", "debug_shell", parse_bool, "add the sysroot's busybox and /bin/sh to the stage images"),
    Setting("build", "dlopen", parse_names, "libraries loaded with dlopen(), added with their closure"),
    Setting("build", "python_modules", parse_names, "extra stdlib modules for the agent runtime"),
    Setting("build", "libcache_max", parse_size, "size past which a node's libcache evicts unused objects"),
    Setting("build", "libcache_disk", parse_disk, 'local disk for the environment root and libcache; "": RAM'),
    Setting("build", "libcache_fstype", parse_fstype, "filesystem on libcache_disk (its module: [images.stage3])"),
    Setting("build", "libcache_format", choice(*LIBCACHE_FORMATS), '"blank": nodes format a blank libcache_disk'),
    Setting("artifacts", "iso_stage", choice("stage1", "stage2"), "which stage the ISO boots"),
    Setting("artifacts", "floppy_kib", parse_floppy_kib, "floppy size: 1440 or 2880 KiB"),
    Setting("artifacts", "floppy_mode", choice("auto", "kernel", "network"), "kernel+ramdisk floppy or iPXE booster"),
    Setting("artifacts", "node_range", parse_node_range, "DHCP range of the nodes, for dnsmasq.conf"),
    Setting("artifacts", "proxy_dhcp", parse_bool, "dnsmasq as proxy-DHCP beside an existing DHCP server"),
    Setting("artifacts", "interface", parse_interface, "the master's interface on the cluster network"),
    Setting("artifacts", "console", parse_console, "serial console of the nodes, e.g. ttyS0,115200"),
    Setting("artifacts", "append", parse_words, "more kernel command-line words for every node kernel"),
    Setting("images", "compression", parse_compression, "how the cpio image is compressed"),
    Setting("images", "budget", parse_size, "largest allowed compressed size"),
    Setting("images", "drivers", parse_drivers, 'NIC drivers: "all", or names / glob patterns'),
    Setting("images", "modules", parse_names, "more kernel modules (names or aliases)"),
)


@dataclass(frozen=True)
class ImageConfig:
    compression: Compression
    budget: int
    drivers: tuple[str, ...]
    modules: tuple[str, ...]


@dataclass(frozen=True)
class ArtifactsConfig:
    iso_stage: str
    floppy_kib: int
    floppy_mode: str
    node_range: str
    proxy_dhcp: bool
    interface: str
    console: str
    append: str


@dataclass(frozen=True)
class Config:
    sysroot: str
    kernel: str
    source_date_epoch: int
    master_url: str
    master_timeout: float
    debug_shell: bool
    dlopen: tuple[str, ...]
    python_modules: tuple[str, ...]
    libcache_max: int = 512 << 20
    libcache_disk: str = ""
    libcache_fstype: str = "ext4"
    libcache_format: str = "blank"
    images: dict[str, ImageConfig] = field(default_factory=dict)
    artifacts: ArtifactsConfig | None = None
    origin: str = DEFAULT_CONFIG_NAME  # which file(s) the values came from, for messages

    def image(self, name: str) -> ImageConfig:
        return self.images[name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        images = {
            name: ImageConfig(
                compression=Compression(img["compression"]),
                budget=img["budget"],
                drivers=tuple(img["drivers"]),
                modules=tuple(img["modules"]),
            )
            for name, img in raw.pop("images").items()
        }
        tuples = {k: tuple(raw[k]) for k in ("dlopen", "python_modules")}
        artifacts = ArtifactsConfig(**raw.pop("artifacts"))
        return cls(**{**raw, **tuples, "images": images, "artifacts": artifacts})


def default_toml() -> str:
    return resources.files("beoboot").joinpath("default.toml").read_text()


def load(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """The embedded default, overridden by the file at `path`, then by SOURCE_DATE_EPOCH in the environment.
    Every value is checked here, before anything is built."""
    environ = dict(os.environ) if environ is None else environ
    values = _validated(parse_toml(default_toml(), DEFAULT_CONFIG_NAME), DEFAULT_CONFIG_NAME)
    origin = DEFAULT_CONFIG_NAME
    if path is not None:
        user = read_toml(path, "config file", hint="check the -c argument")
        _merge(values, _validated(user, str(path)))
        origin = str(path)
    if "SOURCE_DATE_EPOCH" in environ:
        text = environ["SOURCE_DATE_EPOCH"]
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
        values["build"]["source_date_epoch"] = checked(
            "environment",
            "SOURCE_DATE_EPOCH",
            number if number is not None else text,
            parse_epoch,
            hint="unset SOURCE_DATE_EPOCH, or give it a date from 1980 to 2106",
        )
    _check_agent_unpackable(values["images"], origin)
    _check_disk_formattable(values["build"], origin)
    build = values["build"]
    return Config(
        **build,
        images={name: ImageConfig(**values["images"][name]) for name in IMAGE_NAMES},
        artifacts=ArtifactsConfig(**values["artifacts"]),
        origin=origin,
    )


# Images that an agent downloads and unpacks itself (not the kernel): Python's standard library in the
# image reads gzip (zlib is built into the interpreter) and plain cpio, not zstd, lz4 or (without _lzma) xz.
AGENT_UNPACKED = {"stage3": "stage 2", "envroot": "stage 3"}
AGENT_COMPRESSIONS = (Compression.GZIP, Compression.NONE)


def _check_agent_unpackable(images: dict[str, Any], origin: str) -> None:
    for name, unpacker in AGENT_UNPACKED.items():
        compression = images[name]["compression"]
        if compression not in AGENT_COMPRESSIONS:
            raise ConfigError(
                f"{origin}: images.{name}.compression = {compression.value!r} is not allowed: {unpacker}'s agent "
                "unpacks this image itself and reads only gzip or none",
                hint=f'set [images.{name}] compression = "gzip"',
            )


def _check_disk_formattable(build: dict[str, Any], origin: str) -> None:
    """Nodes format a blank libcache disk with mke2fs, which makes ext2/3/4 only: say so now, not on every
    node's console at its first boot."""
    fstype = build["libcache_fstype"]
    if build["libcache_disk"] and build["libcache_format"] == "blank" and fstype not in MKE2FS_FSTYPES:
        raise ConfigError(
            f"{origin}: build.libcache_fstype = {fstype!r} cannot be made on a blank libcache_disk: with "
            'libcache_format = "blank" (the default) nodes format it with mke2fs, which makes '
            + ", ".join(MKE2FS_FSTYPES)
            + " only",
            hint=f'set libcache_fstype = "ext4", or make the {fstype} filesystem on each disk yourself and set '
            '[build] libcache_format = "never"',
        )


def _validated(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    """Check every section, key and value against SETTINGS; return {"build": {...}, "images": {name: {...}}}."""
    sections_hint = "allowed sections: [build], [artifacts], " + ", ".join(f"[images.{n}]" for n in IMAGE_NAMES)
    out: dict[str, Any] = {"build": {}, "artifacts": {}, "images": {}}
    for section, table in raw.items():
        if section not in out:
            raise ConfigError(f"{origin}: unknown section [{section}]", hint=sections_hint)
        if not isinstance(table, dict):
            raise ConfigError(
                f"{origin}: {section} = {shown(table)} is not allowed: expected a table [{section}]", hint=sections_hint
            )
        if section in ("build", "artifacts"):
            out[section] = _validated_table(table, section, section, origin)
            continue
        for name, image_table in table.items():
            if name not in IMAGE_NAMES:
                raise ConfigError(
                    f"{origin}: unknown image [images.{name}]", hint="allowed images: " + ", ".join(IMAGE_NAMES)
                )
            if not isinstance(image_table, dict):
                raise ConfigError(
                    f"{origin}: images.{name} = {shown(image_table)} is not allowed: expected a table [images.{name}]"
                )
            out["images"][name] = _validated_table(image_table, "images", f"images.{name}", origin)
    return out


def _validated_table(table: dict[str, Any], section: str, prefix: str, origin: str) -> dict[str, Any]:
    settings = {s.key: s for s in SETTINGS if s.section == section}
    values = {}
    for key, value in table.items():
        setting = settings.get(key)
        if setting is None:
            raise ConfigError(
                f"{origin}: unknown key {prefix}.{key}", hint=f"allowed keys in [{prefix}]: " + ", ".join(settings)
            )
        values[key] = checked(origin, f"{prefix}.{key}", value, setting.parse)
    return values


def _merge(base: dict[str, Any], override: dict[str, Any]) -> None:
    base["build"].update(override["build"])
    base["artifacts"].update(override["artifacts"])
    for name, table in override["images"].items():
        base["images"][name].update(table)


def render_toml(config: Config) -> str:
    """The effective config as TOML, with each setting's help (for `beoboot-build config`)."""
    helps = {(s.section, s.key): s.help for s in SETTINGS}
    lines = [f"# effective config, from {config.origin}", "", "[build]"]
    build_keys = (
        "sysroot",
        "kernel",
        "source_date_epoch",
        "master_url",
        "master_timeout",
        "debug_shell",
        "dlopen",
        "python_modules",
        "libcache_max",
        "libcache_disk",
        "libcache_fstype",
        "libcache_format",
    )
    for key in build_keys:
        lines.append(f"{key} = {_toml_value(getattr(config, key))}  # {helps['build', key]}")
    lines += ["", "[artifacts]"]
    assert config.artifacts is not None
    for setting in (s for s in SETTINGS if s.section == "artifacts"):
        value = getattr(config.artifacts, setting.key)
        lines.append(f"{setting.key} = {_toml_value(value)}  # {setting.help}")
    for name in IMAGE_NAMES:
        lines += ["", f"[images.{name}]"]
        image = config.images[name]
        for key in ("compression", "budget", "drivers", "modules"):
            value = getattr(image, key)
            if key == "drivers" and value == ("all",):
                value = "all"
            lines.append(f"{key} = {_toml_value(value)}  # {helps['images', key]}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # TOML takes any printable character, not \ud83d surrogates
