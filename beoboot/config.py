"""The build config: [build], [artifacts] and [images.NAME], each a table of settings (beoboot.configfile)
from which come the checks of the site file, `beoboot-build config` and the JSON form. The defaults are the
embedded beoboot/default.toml; a site file (-c FILE) overrides any of its keys.

A finished Config is frozen and round-trips through JSON (a test proves it). What changes during a build
lives in beoboot.image.builder, never here.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import resources
from typing import Any

from agent import cmdline, values
from agent.config import LIBCACHE_FORMATS, MASTER_LOST, MKE2FS_FSTYPES
from agent.schema import Stage
from beoboot import stages
from beoboot.configfile import (
    boolean,
    checked,
    one_of,
    parse_sections,
    parse_toml,
    read_toml,
    render_sections,
    setting,
    settings,
)
from beoboot.errors import ConfigError
from beoboot.image.compress import Compression
from beoboot.resolve.nics import LSPCI

IMAGE_NAMES = tuple(stage.value for stage in Stage)
DEFAULT_CONFIG_NAME = "<embedded default config>"


# -- value parsers: each takes the raw TOML value and returns the typed value, or raises ValueError
#    with a sentence that says what is allowed. agent.values checks a value for where it ends up (one
#    line of a generated file, one kernel command-line word, a URL, a finite number of seconds).


def parse_kernel(value: Any) -> str:
    """ "auto" or a version: one directory name under /lib/modules."""
    if isinstance(value, str) and "/" not in value and value not in (".", ".."):
        return values.name(value, 'a kernel version (a directory name in /lib/modules) or "auto"')
    raise ValueError('a kernel version (a directory name in /lib/modules) or "auto"')


def parse_url(value: Any) -> str:
    value = values.http_url(value)
    return value if value.endswith("/") else value + "/"


def parse_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("a list of non-empty strings")
    return tuple(values.name(v, "a list of non-empty names without spaces") for v in value)


def parse_drivers(value: Any) -> tuple[str, ...]:
    """ "all" (every PCI ethernet driver of the kernel), "lspci:FILE" (the drivers of the NICs in an
    `lspci -n` dump; FILE relative to the config file), or a list of module names, glob patterns and
    "lspci:FILE" items. The dump is read when the images are built."""
    expected = '"all", "lspci:FILE" (an `lspci -n` dump) or a list of module names, glob patterns and "lspci:FILE"'
    if value == "all":
        return ("all",)
    items = [value] if isinstance(value, str) and value.startswith(LSPCI) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError(expected)
    try:
        return tuple(
            LSPCI + values.one_line(item[len(LSPCI) :]) if item.startswith(LSPCI) else values.name(item)
            for item in items
        )
    except ValueError:
        raise ValueError(expected) from None


def _drivers_toml(drivers: tuple[str, ...]) -> str | tuple[str, ...]:
    single = len(drivers) == 1 and (drivers[0] == "all" or drivers[0].startswith(LSPCI))
    return drivers[0] if single else drivers


def parse_compression(value: Any) -> Compression:
    try:
        return Compression(value)
    except (ValueError, TypeError):  # TypeError: a list or table is not hashable
        raise ValueError("one of " + ", ".join(c.value for c in Compression)) from None


def parse_iso_stage(value: Any) -> str:
    return one_of(*stages.stages_booted_from("iso"))(value)


def parse_floppy_kib(value: Any) -> int:
    if isinstance(value, bool) or value not in (1440, 2880):
        raise ValueError("1440 or 2880 (KiB)")
    return value


def parse_node_range(value: Any) -> str:
    from beoboot.artifacts.servers import parse_node_range as parse

    expected = 'an address range "FIRST-LAST/PREFIX", e.g. "10.0.2.100-10.0.2.199/24"'
    text = values.one_line(value, expected)
    if not text.isascii():  # int() reads other scripts' digits as a prefix length: say no before it does
        raise ValueError(expected)
    try:
        parse(text)
    except Exception:  # noqa: BLE001 -- any parse failure is the same wrong value to the user
        raise ValueError(expected) from None
    return text


MAX_NODES = 65536


def parse_nodes(value: Any) -> int:
    return values.whole(value, 1, MAX_NODES, "a number of nodes")


LEASE_UNITS = {"": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
LEASE_MIN, LEASE_MAX = 120, 0xFFFFFFFE  # dnsmasq's shortest; the longest a DHCP lease field holds (all ones: infinite)


def parse_lease_time(value: Any) -> str:
    """A dnsmasq lease time: seconds, or minutes, hours, days or weeks ("45m", "12h", "1d", "1w")."""
    expected = 'a lease time such as "1d", "12h", "45m" or 86400 (seconds), from 2 minutes to 136 years'
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or len(text) > 12:
        raise ValueError(expected)
    number, unit = (text[:-1], text[-1]) if text[-1:] in LEASE_UNITS else (text, "")
    if not number.isdigit() or not LEASE_MIN <= int(number) * LEASE_UNITS[unit] <= LEASE_MAX:
        raise ValueError(expected)
    return text


def parse_program(value: Any) -> str:
    """An absolute path that systemd takes as one word of a command line, and expands nothing in."""
    expected = 'an absolute path without spaces, quotes, "%", "$" or "\\", such as "/usr/local/bin/beoserv"'
    path = values.name(value, expected)
    if not path.startswith("/") or any(c in path for c in "%$\\\"';"):
        raise ValueError(expected)
    return path


def parse_dns_servers(value: Any) -> tuple[str, ...]:
    """Name servers as dnsmasq's server= takes them: an address, or ADDRESS#PORT."""
    expected = 'a list of name server addresses, each "10.0.0.53" or "10.0.0.53#5353"'
    if not isinstance(value, list) or len(value) > 16:
        raise ValueError(expected)
    for item in value:
        address, _, port = item.partition("#") if isinstance(item, str) else ("", "", "")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(expected) from None
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(expected)
    return tuple(value)


def parse_absolute_dir(value: Any) -> str:
    text = values.one_line(value, "an absolute path")
    if not text.startswith("/") or not text.isprintable() or " " in text:
        raise ValueError("an absolute path without spaces")
    return text


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


# The tables of settings: [images.NAME], [artifacts], and [build] (the Config's own keys). Their defaults are
# the embedded default.toml, whose values differ by image: every key must be there, and a site file overrides it.


@dataclass(frozen=True)
class ImageConfig:
    compression: Compression = setting(parse_compression, "how the cpio image is compressed")
    budget: int = setting(parse_size, "largest allowed compressed size")
    drivers: tuple[str, ...] = setting(
        parse_drivers, 'NIC drivers: "all", "lspci:FILE" (a dump of the nodes), or names / globs', toml=_drivers_toml
    )
    modules: tuple[str, ...] = setting(parse_names, "more kernel modules (names or aliases)")


@dataclass(frozen=True)
class ArtifactsConfig:
    iso_stage: str = setting(parse_iso_stage, "which stage the ISO boots")
    floppy_kib: int = setting(parse_floppy_kib, "floppy size: 1440 or 2880 KiB")
    floppy_mode: str = setting(one_of("auto", "kernel", "network"), "kernel+ramdisk floppy or iPXE booster")
    nodes: int = setting(parse_nodes, "how many nodes the master serves: the server configs are sized for them")
    node_range: str = setting(parse_node_range, "DHCP range of the nodes: at least nodes + nodes/2 addresses")
    lease_time: str = setting(parse_lease_time, "DHCP lease time of the nodes; they renew at half of it")
    proxy_dhcp: bool = setting(boolean, "dnsmasq as proxy-DHCP beside an existing DHCP server")
    interface: str = setting(values.interface, "the master's interface on the cluster network")
    console: str = setting(
        partial(values.kernel_word, what='one kernel command-line word such as "ttyS0,115200"'),
        "serial console of the nodes, e.g. ttyS0,115200",
    )
    append: str = setting(parse_words, "more kernel command-line words for every node kernel")
    beoserv: str = setting(parse_program, "where beoserv is on the master, for server/beoserv.service")
    dns: bool = setting(boolean, "dnsmasq answers DNS: the node names from beoserv's hosts file, the rest forwarded")
    dns_forward: tuple[str, ...] = setting(
        parse_dns_servers, "with dns: the site's name servers for every other name, e.g. ['10.0.0.53']"
    )
    dns_hosts_dir: str = setting(
        parse_absolute_dir, "with dns: the directory dnsmasq reads host files from (beoserv's hosts_file is in it)"
    )


@dataclass(frozen=True)
class Config:
    sysroot: str = setting(partial(values.one_line, what="a path"), "the reference install the images are built from")
    kernel: str = setting(parse_kernel, 'kernel version in SYSROOT/lib/modules, or "auto"')
    source_date_epoch: int = setting(values.epoch, "mtime of every file in every image")
    master_url: str = setting(parse_url, "where nodes find the master")
    master_timeout: float = setting(
        partial(values.number, low=1, high=86400), "seconds without the master before a node acts (master_lost)"
    )
    master_lost: str = setting(
        one_of(*MASTER_LOST), '"reboot" or "halt" after master_timeout; "keep": jobs run on, the node waits'
    )
    debug_shell: bool = setting(boolean, "add the sysroot's busybox and /bin/sh to the stage images")
    dlopen: tuple[str, ...] = setting(parse_names, "libraries loaded with dlopen(), added with their closure")
    python_modules: tuple[str, ...] = setting(parse_names, "extra stdlib modules for the agent runtime")
    libcache_max: int = setting(parse_size, "size past which a node's libcache evicts unused objects")
    libcache_disk: str = setting(parse_disk, 'local disk for the environment root and libcache; "": RAM')
    libcache_fstype: str = setting(parse_fstype, "filesystem on libcache_disk (its module: [images.stage3])")
    libcache_format: str = setting(one_of(*LIBCACHE_FORMATS), '"blank": nodes format a blank libcache_disk')
    images: dict[str, ImageConfig] = field(default_factory=dict)
    artifacts: ArtifactsConfig | None = None
    origin: str = DEFAULT_CONFIG_NAME  # which file(s) the values came from, for messages

    def image(self, name: str) -> ImageConfig:
        return self.images[name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The config to_json() wrote, every value checked again as if it came from a file."""
        raw = json.loads(text)
        tables = {"build": {k: raw[k] for k in settings(cls)}, "artifacts": raw["artifacts"], "images": raw["images"]}
        return _config(parse_sections(SECTIONS, tables, "config JSON"), raw["origin"])


SECTIONS = {"build": Config, "artifacts": ArtifactsConfig, "images": dict.fromkeys(IMAGE_NAMES, ImageConfig)}


def default_toml() -> str:
    return resources.files("beoboot").joinpath("default.toml").read_text()


def load(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """The embedded default, overridden by the file at `path`, then by SOURCE_DATE_EPOCH in the environment.
    Every value is checked here, before anything is built."""
    environ = dict(os.environ) if environ is None else environ
    tables = parse_sections(SECTIONS, parse_toml(default_toml(), DEFAULT_CONFIG_NAME), DEFAULT_CONFIG_NAME)
    origin = DEFAULT_CONFIG_NAME
    if path is not None:
        user = read_toml(path, "config file", hint="check the -c argument")
        tables = parse_sections(SECTIONS, user, str(path), base=tables)
        origin = str(path)
    if "SOURCE_DATE_EPOCH" in environ:
        text = environ["SOURCE_DATE_EPOCH"]
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
        tables["build"]["source_date_epoch"] = checked(
            "environment",
            "SOURCE_DATE_EPOCH",
            number if number is not None else text,
            values.epoch,
            hint="unset SOURCE_DATE_EPOCH, or give it a date from 1980 to 2106",
        )
    _check_agent_unpackable(tables["images"], origin)
    _check_disk_formattable(tables["build"], origin)
    _check_range_holds_nodes(tables["artifacts"], origin)
    return _config(tables, origin)


def _config(tables: dict[str, Any], origin: str) -> Config:
    images = {name: ImageConfig(**table) for name, table in tables["images"].items()}
    return Config(**tables["build"], images=images, artifacts=ArtifactsConfig(**tables["artifacts"]), origin=origin)


def _check_agent_unpackable(images: dict[str, Any], origin: str) -> None:
    """Each image's compression is one its unpacker reads (stages/NAME.toml: unpacked_by, compressions)."""
    for spec in stages.all_stages():
        name, compression = spec.stage.value, images[spec.stage]["compression"]
        if compression not in spec.compressions:
            raise ConfigError(
                f"{origin}: images.{name}.compression = {compression.value!r} is not allowed: {spec.unpacker} "
                "unpacks this image itself and reads only " + " or ".join(spec.compressions),
                hint=f'set [images.{name}] compression = "{spec.compressions[0]}"',
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


def _check_range_holds_nodes(artifacts: dict[str, Any], origin: str) -> None:
    """The DHCP range holds the nodes with room to spare (beoboot.artifacts.servers.range_needed). Beside
    another DHCP server (proxy_dhcp), the addresses are that server's, and only the network is used."""
    from beoboot.artifacts.servers import nodes_fitting, parse_node_range, range_needed, widened

    nodes, text = artifacts["nodes"], artifacts["node_range"]
    node_range, needed = parse_node_range(text), range_needed(nodes)
    if artifacts["proxy_dhcp"] or node_range.addresses >= needed:
        return
    wider = widened(node_range, needed)
    raise ConfigError(
        f"{origin}: artifacts.node_range = {text!r} has {node_range.addresses} addresses, too few for "
        f"artifacts.nodes = {nodes}: a range needs the nodes and half as many again ({needed}), or nodes booting "
        "together are offered the same address, and a replaced node's old lease keeps its address for lease_time",
        hint=(f'widen it, e.g. node_range = "{wider}"; ' if wider else f"give a range of {needed} addresses; ")
        + f"or set nodes = {nodes_fitting(node_range.addresses)} or fewer",
    )


def render_toml(config: Config) -> str:
    """The effective config as TOML, with each setting's help (for `beoboot-build config`)."""
    tables = {"build": config, "artifacts": config.artifacts, "images": config.images}
    return "\n".join([f"# effective config, from {config.origin}", *render_sections(SECTIONS, tables)]) + "\n"
