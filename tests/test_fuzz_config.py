"""Fuzzing the config loaders: any bytes, any TOML document (known keys with wrong, huge, NaN, unicode or
multi-line values) give a config or a ConfigError, never another exception, in bounded time; and what an
accepted build config renders (dnsmasq.conf, nginx.conf, boot menus, kernel command lines) has exactly the
expected lines and words."""

import dataclasses
import datetime
import keyword
import math
import re
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent import cmdline, values
from agent.schema import Stage
from beoboot import config, configfile
from beoboot.artifacts import render
from beoboot.artifacts.media import kernel_cmdline
from beoboot.artifacts.servers import parse_node_range, write_beoserv_unit, write_server_configs
from beoboot.errors import ConfigError
from beoboot.master.config import MasterConfig, load_config, parse_config
from beoboot.stages import StageSpec, load_stage, pins

TIME_LIMIT = 5.0  # seconds for one load, on a loaded 2-core machine; a load takes milliseconds
# tmp_path is per test, Hypothesis runs many examples in one: each example overwrites the same file
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- writing TOML: Python values back to text (tomllib only reads)


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else "inf"
            if value == math.inf
            else "-inf"
            if value == -math.inf
            else repr(value)
        )
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# -- documents: plausible values at known keys (so that many documents are accepted and their renderings
#    checked), then up to two hostile entries: a known key with a mutated or wild value, or any key at all.

HOSTILE_TEXT = [
    "\n",
    "\r",
    "\x00",
    " ",
    "\t",
    '"',
    "'",
    "$",
    ";",
    ",",
    "#",
    "{",
    "\u2028",
    "\u0085",
    "é",
    "${x}",
    "\\",
    "/../",
    "\ufeff",
    "\x7f",
    "😀",
]
HOSTILE_NUMBERS = [math.nan, math.inf, -math.inf, -1, 0, 0.001, 10**30, 1e300, 2**63, 2**32, 99999999999, 1.5]
wild_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.dates(),
)
wild_values = st.recursive(
    wild_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def mutated(value):
    """Values near a plausible one: a hostile character inside a string, a number out of range or NaN."""
    if isinstance(value, str):
        return st.tuples(st.integers(0, len(value)), st.sampled_from(HOSTILE_TEXT)).map(
            lambda t: value[: t[0]] + t[1] + value[t[0] :]
        )
    if isinstance(value, list):
        member = mutated(value[0]) if value else st.sampled_from(HOSTILE_TEXT)
        return st.lists(member, min_size=1, max_size=3)
    if isinstance(value, bool):
        return st.sampled_from([0, 1, "true", [True]])
    if isinstance(value, dict):
        return st.fixed_dictionaries({k: st.just(v) | mutated(v) for k, v in value.items()}) | st.just({})
    return st.sampled_from([*HOSTILE_NUMBERS, str(value), float(value)])


def documents(plausible: dict[tuple[str, ...], list]):
    paths = sorted(plausible)
    good = st.lists(
        st.sampled_from(paths).flatmap(lambda p: st.tuples(st.just(p), st.sampled_from(plausible[p]))),
        max_size=len(paths),
    )
    hostile = st.sampled_from(paths).flatmap(
        lambda p: st.tuples(st.just(p), st.sampled_from(plausible[p]).flatmap(mutated) | wild_values)
    )
    segments = st.sampled_from(sorted({part for path in paths for part in path})) | st.text(max_size=6)
    anywhere = st.tuples(st.lists(segments, min_size=1, max_size=3).map(tuple), wild_values)
    return st.builds(lambda g, b: nest(g + b), good, st.lists(hostile | anywhere, max_size=2))


def nest(entries) -> dict:
    doc: dict = {}
    for path, value in entries:
        table = doc
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                break
        else:
            if not isinstance(table.get(path[-1]), dict):
                table[path[-1]] = value
    return doc


BUILD_PLAUSIBLE = {
    ("build", "sysroot"): ["/", "/srv/sysroot"],
    ("build", "kernel"): ["auto", "6.1.0-18-amd64"],
    ("build", "source_date_epoch"): [1700000000, 315532800, 2**32 - 1],
    ("build", "master_url"): ["http://10.0.2.2:8080/", "https://[fd00::1]:8443/boot", "http://m", "http://a.b:80/x/"],
    ("build", "master_timeout"): [30, 6, 1.5, 86400],
    ("build", "debug_shell"): [True, False],
    ("build", "dlopen"): [["libgcc_s.so.1"], []],
    ("build", "python_modules"): [[], ["ssl"]],
    ("build", "libcache_max"): ["512M", 1 << 20],
    ("build", "libcache_disk"): ["", "/dev/vdb"],
    ("build", "libcache_fstype"): ["ext4", "ext3"],
    ("build", "libcache_format"): ["blank", "never"],
    ("artifacts", "iso_stage"): ["stage1", "stage2"],
    ("artifacts", "floppy_kib"): [1440, 2880],
    ("artifacts", "floppy_mode"): ["auto", "kernel", "network"],
    ("artifacts", "nodes"): [1, 64, 600, 1000],
    ("artifacts", "node_range"): ["10.0.2.100-10.0.2.199/24", "10.54.0.10-10.54.3.250/16", "10.54.0.10-10.54.7.250/21"],
    ("artifacts", "lease_time"): ["1d", "12h", "45m", 86400],
    ("artifacts", "beoserv"): ["/usr/local/bin/beoserv", "/opt/beoboot/.venv/bin/beoserv"],
    ("artifacts", "proxy_dhcp"): [True, False],
    ("artifacts", "interface"): ["eth0", "br-cluster", "ens3*", "en.1_x"],
    ("artifacts", "console"): ["ttyS0,115200", "ttyS1,9600n8", "tty0"],
    ("artifacts", "append"): ["", "quiet", "rd.debug  loglevel=7", "beoboot.smoke", "beoboot.master_timeout=12"],
    **{
        ("images", name, "compression"): ["gzip", "none"] + (["zstd", "xz"] if name in ("stage1", "stage2") else [])
        for name in config.IMAGE_NAMES
    },
    **{("images", name, "budget"): ["48M", 1000000] for name in config.IMAGE_NAMES},
    **{("images", name, "drivers"): ["all", ["e1000*"], []] for name in config.IMAGE_NAMES},
    **{("images", name, "modules"): [[], ["ext4"]] for name in config.IMAGE_NAMES},
}
MASTER_PLAUSIBLE = {
    ("heartbeat_interval",): [0.5, 1, 5.0],
    ("heartbeat_timeout",): [6, 30.0, 600],
    ("reap_interval",): [0, 0.5],
    ("first_node_address",): ["10.54.0.10"],
    ("hostname_prefix",): ["n", "node"],
    ("keep_boots",): [1, 10],
    ("hosts_file",): ["", "/tmp/hosts"],
}
STAGE_PLAUSIBLE = {
    ("description",): ["stage 2 PXE ramdisk"],
    ("program",): ["stage1.booster", "stage2.pxe", "stage3.supervisor"],
    ("nic_drivers",): [True, False],
    ("devices",): [True, False],
    ("directories",): [["/dev", "/tmp"], []],
    ("binaries",): [[], ["/bin/sh"]],
    ("overlay",): ["stage2/overlay"],
    ("templates",): [[{"template": "envroot/passwd.j2", "dest": "/etc/passwd"}], []],
    ("fetches",): [["stage3"], ["kernel", "envroot"], []],
    ("unpacked_by",): ["kernel", "stage1"],
    ("compressions",): [["gzip", "none"], ["zstd"]],
    ("boots_from",): [["pxe", "iso"], []],
    ("colour",): ["#f28e2b"],
    ("formats_libcache_disk",): [True, False],
}
text_values = st.sampled_from(sorted({v for vs in BUILD_PLAUSIBLE.values() for v in vs if isinstance(v, str)}))


def timed(load, *args, **kwargs):
    """load(...) -> (result or None for a ConfigError); any other exception fails the example."""
    started = time.monotonic()
    try:
        result = load(*args, **kwargs)
    except ConfigError as exc:
        assert exc.message and str(exc)
        result = None
    assert time.monotonic() - started < TIME_LIMIT
    return result


# -- arbitrary bytes


@fixture_ok
@given(data=st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_bytes_as_a_config_file(tmp_path, data):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(data)
    timed(config.load, path, environ={})
    timed(load_config, path)
    (tmp_path / "stage1.toml").write_bytes(data)
    timed(load_stage, Stage.BOOSTER, tmp_path)


# -- arbitrary TOML documents


@fixture_ok
@given(doc=documents(BUILD_PLAUSIBLE))
def test_build_config_documents(tmp_path, doc):
    path = tmp_path / "site.toml"
    path.write_text(toml_document(doc))
    cfg = timed(config.load, path, environ={})
    event("accepted" if cfg is not None else "refused")
    if cfg is not None:
        check_accepted_build_config(cfg, tmp_path)
        # `beoboot-build config` prints it as TOML that loads back the same
        path.write_text(config.render_toml(cfg))
        assert config.load(path, environ={}) == cfg


@given(doc=documents(MASTER_PLAUSIBLE))
def test_beoserv_config_documents(doc):
    cfg = timed(parse_config, toml_document(doc), "beoserv.toml")
    event("accepted" if cfg is not None else "refused")
    if cfg is not None:
        assert isinstance(cfg, MasterConfig)
        for seconds in (cfg.heartbeat_interval, cfg.heartbeat_timeout, cfg.reap_interval, cfg.effective_reap_interval):
            assert math.isfinite(seconds) and 0 <= seconds <= 86400
        assert cfg.heartbeat_interval < cfg.heartbeat_timeout and 1 <= cfg.keep_boots <= 10000
        assert re.fullmatch(r"[A-Za-z]{1,32}", cfg.hostname_prefix)
        assert cfg.hosts_file == "" or cfg.hosts_file.isprintable()


@fixture_ok
@given(doc=documents(STAGE_PLAUSIBLE), described=st.booleans())
def test_stage_file_documents(tmp_path, doc, described):
    if described:  # the one key a stage file must have: most documents have it, so others are checked too
        doc.setdefault("description", "a stage")
    (tmp_path / "stage2.toml").write_text(toml_document(doc))
    spec = timed(load_stage, Stage.PXE, tmp_path)
    event("accepted" if spec is not None else "refused")
    if spec is not None:
        assert isinstance(spec, StageSpec) and spec.description.isprintable()
        assert spec.program in (None, "stage1.booster", "stage2.pxe", "stage3.supervisor")
        assert all(p.startswith("/") and ".." not in p.split("/") for p in (*spec.directories, *spec.binaries))
        assert all(t.dest.startswith("/") and not t.template.startswith("/") for t in spec.templates)


# -- the agent's kernel command line

beoboot_words = st.builds(
    lambda key, value: f"beoboot.{key}={value}",
    st.sampled_from(["master", "master_timeout", "interface", "pin.stage3", "smoke", "other"]),
    text_values.flatmap(lambda v: st.just(v) | mutated(v))
    | st.sampled_from(["nan", "inf", "1e999", "30", "2.5", "ab" * 32]),
)


@given(text=st.text(max_size=200) | st.lists(beoboot_words | st.text(max_size=10), max_size=6).map(" ".join))
def test_agent_kernel_command_line(text):
    started = time.monotonic()
    try:
        options = cmdline.parse(text)
    except cmdline.CmdlineError as exc:
        assert "beoboot." in str(exc)
        event("refused")
        return
    finally:
        assert time.monotonic() - started < TIME_LIMIT
    if "master" in options:
        values.http_url(options["master"])
    if "master_timeout" in options:
        assert 1 <= float(options["master_timeout"]) <= 86400
    if "interface" in options:
        values.interface(options["interface"])
    for key, value in options.items():
        assert not key.startswith("pin.") or re.fullmatch(r"[0-9a-f]{64}", value)


# -- what an accepted build config renders

MARK = "\x01{}\x01"  # a marker no accepted value contains: each rendered value sits where its marker sat


def assert_same_lines(template: str, real: dict, **fixed) -> None:
    """`template` rendered with the config's values has the lines it has with markers in their place, and
    each value sits exactly where its marker was: no value adds, ends or splits a line."""
    marked = render(template, **{k: MARK.format(k) for k in real}, **fixed).split("\n")
    rendered = render(template, **real, **fixed).split("\n")
    assert len(rendered) == len(marked), f"{template}: a value changed the number of lines"
    for pattern, line in zip(marked, rendered):
        regex = re.escape(pattern)
        for key, value in real.items():
            regex = regex.replace(re.escape(MARK.format(key)), re.escape(str(value)))
        assert re.fullmatch(regex, line), f"{template}: {line!r} is not {pattern!r}"


def check_accepted_build_config(cfg: config.Config, scratch) -> None:
    art = cfg.artifacts
    hashes = {name: "ab" * 32 for name in ("kernel", "stage2", "stage3", "envroot")}
    # the kernel command line: exactly the intended words, however the kernel or a boot loader splits it
    for stage in Stage:
        line = kernel_cmdline(cfg, stage, hashes)
        intended = [
            f"console={art.console}",
            "panic=10",
            "loglevel=4",
            "PYTHONHASHSEED=0",
            f"beoboot.master={cfg.master_url}",
            *(f"beoboot.pin.{n}={hashes[n]}" for n in pins(stage)),
            *art.append.split(),
        ]
        assert line.split(" ") == intended == line.split()
        assert all(values.KERNEL_WORD.fullmatch(word) for word in intended)
        cmdline.parse(line)  # the agent takes every beoboot.* word of it
        append = {"append": line}
        assert_same_lines("pxelinux-default.j2", append, kernel="vmlinuz", initrd="initrd.img")
        assert_same_lines("grub-net.cfg.j2", append, kernel="vmlinuz", initrd="initrd.img")
        assert_same_lines("grub.cfg.j2", append, kernel="/boot/vmlinuz", initrd="/boot/initrd.img")
        assert_same_lines("isolinux.cfg.j2", append)
        assert_same_lines("floppy-syslinux.cfg.j2", append, kind="kernel", kernel="vmlinuz", initrd="initrd.img")
        assert_same_lines(
            "boot.ipxe.j2",
            {**append, "base_url": cfg.master_url.rstrip("/") + "/pxe"},
            kernel="vmlinuz",
            initrd="initrd.img",
        )
    assert_same_lines("floppy-booster.ipxe.j2", {"script_url": f"{cfg.master_url}pxe/boot.ipxe"})
    # dnsmasq.conf, nginx.conf and beoserv.service: the same directives, line for line, as with the default
    default = config.load(environ={})
    written, reference = (
        [
            *write_server_configs(
                scratch / name,
                node_range=parse_node_range(c.artifacts.node_range),
                nodes=c.artifacts.nodes,
                lease_time=c.artifacts.lease_time,
                proxy_dhcp=art.proxy_dhcp,
                http_root=scratch / "srv",
                master_url=c.master_url + "pxe/",
                mtime=c.source_date_epoch,
                interface=c.artifacts.interface,
                state_dir=scratch / "state",
            ),
            write_beoserv_unit(
                scratch / name,
                nodes=c.artifacts.nodes,
                beoserv=c.artifacts.beoserv,
                root=scratch / "srv",
                master_url=c.master_url,
                mtime=c.source_date_epoch,
            ),
        ]
        for name, c in (("site", cfg), ("default", default))
    )
    for mine, theirs in zip(written, reference):
        lines, expected = mine.read_text().split("\n"), theirs.read_text().split("\n")
        assert [directive(line) for line in lines] == [directive(line) for line in expected], mine.name
    dnsmasq = written[0].read_text().split("\n")
    assert f"interface={art.interface}" in dnsmasq
    assert f"dhcp-boot=tag:ipxe,{cfg.master_url}pxe/boot.ipxe" in dnsmasq
    assert art.proxy_dhcp or f"dhcp-range={art.node_range.split('-')[0]}" in "\n".join(dnsmasq)
    exec_start = next(line for line in written[2].read_text().split("\n") if line.startswith("ExecStart="))
    assert exec_start.split()[0] == f"ExecStart={art.beoserv}"


def directive(line: str) -> str:
    """What a config line is, without its values: "interface=", "# ...", "    listen", ""."""
    if line.lstrip().startswith("#"):
        return "#"
    return re.split(r"[= ]", line.strip(), maxsplit=1)[0] + ("=" if "=" in line else "")


@pytest.mark.parametrize("value", ["eth0", "br-cluster", "en*"])
def test_rendered_lines_check_catches_an_injected_line(tmp_path, value):
    """The property's own check: with the loader's check bypassed, a newline in the interface is caught."""
    cfg = config.load(environ={})
    check_accepted_build_config(cfg, tmp_path)
    bad = dataclasses.replace(cfg, artifacts=dataclasses.replace(cfg.artifacts, interface=value + "\ndhcp-script=/x"))
    with pytest.raises(AssertionError):
        check_accepted_build_config(bad, tmp_path)


# -- the settings-table mechanism itself: any table of the loaders' checks, nested tables and lists of them

WHERE_PLAUSIBLE = {
    config.Config: ("build",),
    config.ArtifactsConfig: ("artifacts",),
    config.ImageConfig: ("images", "stage1"),
}
POOL = [
    (spec.metadata, {**BUILD_PLAUSIBLE, **MASTER_PLAUSIBLE}.get((*WHERE_PLAUSIBLE.get(table, ()), name), [0]))
    for table in (config.Config, config.ArtifactsConfig, config.ImageConfig, MasterConfig)
    for name, spec in configfile.settings(table).items()
]
KEY_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda k: not keyword.iskeyword(k))


@st.composite
def settings_tables(draw, depth=0):
    """A frozen dataclass of settings drawn from the pool (with no default or a None default; or a nested table
    or a list of them), and a strategy for TOML tables of it: mostly plausible values, some mutated or wild, now
    and then a key it does not know."""
    entries = []
    for name in draw(st.lists(KEY_NAMES, unique=True, max_size=5)):
        kind = draw(st.sampled_from(["plain", "plain", "table", "tables"] if depth < 1 else ["plain"]))
        if kind == "plain":
            metadata, plausible = draw(st.sampled_from(POOL))
            check, toml, good = metadata["check"], metadata["toml"], st.sampled_from(plausible)
            bad = good.flatmap(mutated) | wild_values
        else:
            sub, sub_tables = draw(settings_tables(depth + 1))
            check, toml = (sub if kind == "table" else [sub]), None
            good, bad = (sub_tables if kind == "table" else st.lists(sub_tables, max_size=3)), wild_values
        default = draw(st.sampled_from([dataclasses.MISSING, None]))
        entries.append(
            (name, default, configfile.setting(check, f"help of {name}", default, toml=toml), good | good | bad)
        )
    entries.sort(key=lambda e: e[1] is not dataclasses.MISSING)  # a dataclass's required fields come first
    table = dataclasses.make_dataclass("Table", [(n, object, f) for n, _, f, _ in entries], frozen=True)
    known = st.fixed_dictionaries(
        {n: v for n, d, _, v in entries if d is dataclasses.MISSING},
        optional={n: v for n, d, _, v in entries if d is not dataclasses.MISSING},
    )
    unknown = st.dictionaries(KEY_NAMES, wild_values, min_size=1, max_size=2)
    return table, known | known | st.builds(lambda d, extra: {**extra, **d}, known, unknown)


@given(table_and_values=settings_tables().flatmap(lambda t: st.tuples(st.just(t[0]), t[1])))
def test_any_settings_table_gives_values_or_a_config_error(table_and_values):
    table, raw = table_and_values
    try:
        values = configfile.parse(table, raw, "fuzz.toml", "t")
    except ConfigError as exc:
        assert re.match(r"fuzz\.toml: (t[.\[ ]|unknown keys \['t\.)", exc.message), exc.message
        event("refused")
        return
    event("accepted")
    assert list(values) == list(configfile.settings(table))
    nested = any(isinstance(s.metadata["check"], (type, list)) for s in configfile.settings(table).values())
    if not nested:  # a flat table renders as TOML that reads back the same
        rendered = "\n".join(configfile.render(table(**values)))
        assert configfile.parse(table, configfile.parse_toml(rendered, "rendered"), "rendered") == values
