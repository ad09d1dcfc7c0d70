"""Config values are checked for what they end up in (a line of dnsmasq.conf or a boot menu, a kernel
command-line word, a timer, a cpio or FAT date), and every loader fails closed with a ConfigError that names
the file, the key and what is wrong."""

import argparse
import json
import os
import re
import shutil
import threading

import pytest

from agent import cmdline
from agent.config import AgentConfig
from agent.schema import Stage
from beoboot import config
from beoboot.cli import make_parser
from beoboot.errors import ConfigError, ModuleError
from beoboot.master.config import load_config, parse_config
from beoboot.stages import load_stage
from tests.conftest import have_kernel, run_beoboot


def load_site(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return config.load(path, environ={})


def rejected(tmp_path, text, *words):
    with pytest.raises(ConfigError) as err:
        load_site(tmp_path, text)
    for word in ("site.toml", *words):
        assert word in str(err.value)
    return str(err.value)


# -- 1. one line of a generated file


@pytest.mark.parametrize(
    "text, key",
    [
        ('[artifacts]\ninterface = "eth0\\ndhcp-script=/tmp/x"\n', "artifacts.interface"),
        ('[artifacts]\ninterface = "eth0,eth1"\n', "artifacts.interface"),  # a second dnsmasq interface
        ('[artifacts]\ninterface = "eth0\\u0000"\n', "artifacts.interface"),
        ('[build]\nmaster_url = "http://x/\\ndhcp-script=/tmp/x"\n', "build.master_url"),
        ('[artifacts]\nconsole = "ttyS0\\n  APPEND init=/bin/sh"\n', "artifacts.console"),
        ('[artifacts]\nappend = "quiet\\rAPPEND init=/bin/sh"\n', "artifacts.append"),
        ('[artifacts]\nnode_range = "10.0.2.100-10.0.2.199/24\\n"\n', "artifacts.node_range"),
        ('[build]\nsysroot = "/\\u2028"\n', "build.sysroot"),
        ('[build]\nkernel = "6.1\\nx"\n', "build.kernel"),
        ('[build]\nkernel = "../../etc"\n', "build.kernel"),
        ('[build]\nlibcache_disk = "/dev/vdb\\nx"\n', "build.libcache_disk"),
        ('[build]\ndlopen = ["libfoo.so\\nbar"]\n', "build.dlopen"),
        ('[images.stage3]\nmodules = ["ext4", "a b"]\n', "images.stage3.modules"),
    ],
)
def test_a_value_that_would_break_its_line_is_refused(tmp_path, text, key):
    rejected(tmp_path, text, key, "is not allowed: expected")


@pytest.mark.parametrize(
    "text, key",
    [
        ('hostname_prefix = "nœud"', "hostname_prefix"),  # not a DNS host name in the hosts file
        ('hosts_file = "/tmp/hosts\\nx"', "hosts_file"),
    ],
)
def test_beoserv_text_values_fit_their_line(text, key):
    with pytest.raises(ConfigError, match=f"beoserv.toml: {key} = "):
        parse_config(text, "beoserv.toml")


# -- 2. one kernel command-line word, http(s) URLs that parse


@pytest.mark.parametrize(
    "text, key",
    [
        ('[build]\nmaster_url = "http://x/ init=/bin/sh"\n', "build.master_url"),
        ('[build]\nmaster_url = "http://x/\\tinit=/bin/sh"\n', "build.master_url"),
        ('[build]\nmaster_url = "http://a,b/"\n', "build.master_url"),  # a second field of dhcp-boot=
        ('[build]\nmaster_url = "http://${net0/ip}/"\n', "build.master_url"),  # iPXE expands it
        ('[build]\nmaster_url = "http://"\n', "build.master_url"),
        ('[build]\nmaster_url = "http://x:99999/"\n', "build.master_url"),
        ('[build]\nmaster_url = "http://[::1/"\n', "build.master_url"),
        ('[artifacts]\nconsole = "ttyS0 init=/bin/sh"\n', "artifacts.console"),
        ('[artifacts]\nconsole = "\\"ttyS0"\n', "artifacts.console"),
        ('[artifacts]\nappend = "quiet \\"init=/bin/sh x\\""\n', "artifacts.append"),
        ('[artifacts]\nappend = "quiet; reboot"\n', "artifacts.append"),  # GRUB ends the linux command at ;
        ('[artifacts]\nappend = "a\\tb"\n', "artifacts.append"),
    ],
)
def test_a_kernel_word_is_one_word(tmp_path, text, key):
    rejected(tmp_path, text, key)


def test_kernel_command_line_words_are_the_ones_configured(tmp_path):
    from beoboot.artifacts.media import kernel_cmdline

    cfg = load_site(
        tmp_path,
        '[build]\nmaster_url = "http://[fd00::1]:8080/x"\n'
        '[artifacts]\nconsole = "ttyS0,115200n8"\nappend = "  quiet  rd.debug=1 "\n',
    )
    words = kernel_cmdline(cfg, "stage2", {"stage3": "ab" * 32}).split(" ")
    assert "console=ttyS0,115200n8" in words and "beoboot.master=http://[fd00::1]:8080/x/" in words
    assert words[-2:] == ["quiet", "rd.debug=1"]
    assert cmdline.parse(" ".join(words))["master"] == "http://[fd00::1]:8080/x/"


# -- 3. numbers are finite and in range, in every loader


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "0.001", "-1", "100000"])
def test_master_timeout_is_a_finite_number_of_seconds(tmp_path, value):
    rejected(tmp_path, f"[build]\nmaster_timeout = {value}\n", "build.master_timeout", "seconds")


@pytest.mark.parametrize(
    "text, key",
    [
        ("heartbeat_interval = nan", "heartbeat_interval"),
        ("heartbeat_interval = 1e-300", "heartbeat_interval"),
        ("heartbeat_timeout = inf", "heartbeat_timeout"),
        ("heartbeat_timeout = nan", "heartbeat_timeout"),
        ("reap_interval = nan", "reap_interval"),
        ("reap_interval = inf", "reap_interval"),
        ("heartbeat_timeout = 1" + "0" * 400, "heartbeat_timeout"),  # no float holds it: OverflowError before
        ("keep_boots = 100000000000000000000", "keep_boots"),  # past SQLite's 64-bit integers
    ],
)
def test_beoserv_numbers_are_finite_and_in_range(text, key):
    with pytest.raises(ConfigError, match=f"beoserv.toml: {key} = "):
        parse_config(text, "beoserv.toml")


@pytest.mark.parametrize("word", ["nan", "inf", "1e999", "-5", "0", "NaN"])
def test_agent_refuses_a_master_timeout_that_turns_the_watchdog_off(word):
    with pytest.raises(cmdline.CmdlineError, match="beoboot.master_timeout"):
        cmdline.parse(f"console=ttyS0 beoboot.master_timeout={word}")
    assert cmdline.parse("beoboot.master_timeout=12.5")["master_timeout"] == "12.5"


@pytest.mark.parametrize(
    "word", ["beoboot.master=ftp://x/", "beoboot.master=http://", "beoboot.pin.stage3=xyz", "beoboot.interface=eth0/x"]
)
def test_agent_refuses_command_line_values_it_cannot_use(word):
    with pytest.raises(cmdline.CmdlineError, match=re.escape(word.partition("=")[0])):
        cmdline.parse(f"quiet {word}")


def test_agent_config_with_nan_is_refused():
    good = AgentConfig(version="1", stage="stage3", program="stage3.supervisor", kernel_version="6.1")
    raw = json.loads(good.to_json())
    assert AgentConfig.from_json(json.dumps(raw)) == good
    raw["master_timeout"] = float("nan")
    with pytest.raises(ValueError, match="master_timeout"):
        AgentConfig.from_json(json.dumps(raw))


# -- 4. no traceback: bad files, directories, FIFOs, dates the outputs cannot hold


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "site.toml"
    path.write_bytes(b'[build]\nsysroot = "/\xff"\n')
    with pytest.raises(ConfigError, match="site.toml is not UTF-8"):
        config.load(path, environ={})
    with pytest.raises(ConfigError, match="site.toml is not UTF-8"):
        load_config(path)


def test_non_utf8_stage_file_is_a_config_error(tmp_path):
    (tmp_path / "stage1.toml").write_bytes(b'description = "\xfe"\n')
    with pytest.raises(ConfigError, match="stage1.toml is not UTF-8"):
        load_stage(Stage.BOOSTER, tmp_path)


@pytest.mark.parametrize(
    "text, key",
    [
        ("", "description"),
        ('description = "x"\ndirectories = "/dev"', "directories"),
        ('description = "x"\nnic_drivers = "yes"', "nic_drivers"),
        ('description = "x"\nprogram = "os.path"', "program"),
        ('description = "x"\noverlay = "../../etc"', "overlay"),
        ('description = "x"\ntemplates = [{ template = "a.j2" }]', "templates[0]"),
        ('description = "x"\ntemplates = [{ template = "a.j2", dest = "etc/x" }]', "templates[0].dest"),
        ('description = "x"\ntemplates = [{ template = 5, dest = "/etc/x" }]', "templates[0].template"),
    ],
)
def test_stage_file_values_are_checked(tmp_path, text, key):
    (tmp_path / "stage1.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"stage1.toml: {key}")):
        load_stage(Stage.BOOSTER, tmp_path)


@pytest.mark.parametrize("command", ["config", "build"])
def test_config_that_is_a_directory_or_fifo_is_refused_at_once(tmp_path, command):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, "a directory"), (fifo, "a FIFO")):
        # a FIFO with no writer would block open() for ever: the timeout fails the test instead
        output = ("-o", tmp_path / "out") if command == "build" else ()
        result = run_beoboot(command, "-c", path, *output, check=False, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert str(path) in result.stderr and kind in result.stderr


def test_beoserv_config_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "beoserv.toml"
    os.mkfifo(fifo)
    outcome = []

    def load():
        try:
            load_config(fifo)
        except ConfigError as exc:
            outcome.append(str(exc))

    # beoserv reads its config again on SIGHUP, on its event loop: an open() that waits for a writer stops it
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked in open(): give it a writer so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("load_config() of a FIFO blocked")
    assert outcome and "a FIFO" in outcome[0]


@pytest.mark.parametrize("epoch", [99999999999, 2**32, 0, 315532799, -1])
def test_source_date_epoch_the_outputs_cannot_hold_is_refused_at_load(tmp_path, epoch):
    rejected(tmp_path, f"[build]\nsource_date_epoch = {epoch}\n", "build.source_date_epoch", "1980", "2106")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH"):
        config.load(environ={"SOURCE_DATE_EPOCH": str(epoch)})


def test_source_date_epoch_bounds_are_accepted(tmp_path):
    for epoch in (315532800, 2**32 - 1):
        assert load_site(tmp_path, f"[build]\nsource_date_epoch = {epoch}\n").source_date_epoch == epoch


def test_a_huge_number_or_deep_nesting_is_a_config_error(tmp_path):
    rejected(tmp_path, "[build]\nmaster_timeout = " + "9" * 5000 + "\n", "not a config TOML file")
    rejected(tmp_path, "[build]\ndlopen = " + "[" * 5000 + "]" * 5000 + "\n")
    rejected(tmp_path, '[images.stage1]\nbudget = "' + "9" * 30 + 'M"\n', "images.stage1.budget")
    rejected(tmp_path, '[images.stage1]\nbudget = "٤٨M"\n', "images.stage1.budget")  # Arabic-Indic digits


# -- 5. messages name the file and the dotted key; hints give flags the command accepts


@pytest.mark.parametrize(
    "text, key",
    [
        ("[build]\nsysroto = '/'\n", "build.sysroto"),
        ("[images.stage3]\nmodules = 'ext4'\n", "images.stage3.modules"),
        ("[images.stage1]\ncompression = ['zstd']\n", "images.stage1.compression"),
        ("[artifacts]\nfloppy_kib = true\n", "artifacts.floppy_kib"),
        ("build = 1\n", "build = 1"),
        ("[images]\nstage1 = 1\n", "images.stage1 = 1"),
        ("[images.stage3]\ncompression = 'zstd'\n", "images.stage3.compression"),
    ],
)
def test_errors_name_the_dotted_key(tmp_path, text, key):
    rejected(tmp_path, text, key)


def command_options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def assert_hint_works(hint: str, command: str) -> None:
    """Every flag a hint suggests is one `command` accepts, or one of a command the hint names for it."""
    subparsers = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    named = [name for name in subparsers if re.search(rf"(?<![\w.])\b{name}\b(?![.\w])", hint) and name != command]
    for flag in re.findall(r"(?<![\w-])--?[a-z][a-z-]*", hint):
        assert flag in command_options(subparsers[command]) or any(
            flag in command_options(subparsers[name]) for name in named
        ), f"hint {hint!r} of `{command}` suggests {flag}, which it rejects"


def test_hints_of_build_errors_suggest_what_build_accepts(tmp_path):
    from beoboot.resolve.kmod import KernelModules
    from beoboot.resolve.sysroot import Sysroot

    with pytest.raises(Exception) as missing_tree:
        Sysroot(tmp_path / "no-such-tree")
    (tmp_path / "tree").mkdir()
    with pytest.raises(ModuleError) as no_kernel:
        KernelModules.latest(Sysroot(tmp_path / "tree"))
    with pytest.raises(ModuleError) as wrong_kernel:
        KernelModules(Sysroot(tmp_path / "tree"), "9.9.9")
    for err in (missing_tree, no_kernel, wrong_kernel):
        for command in ("build", "modules"):
            assert_hint_works(err.value.hint, command)
        assert "[build]" in err.value.hint  # where `build` takes the value from


def test_build_with_a_missing_sysroot_names_it_and_hints_at_the_config(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(f'[build]\nsysroot = "{tmp_path / "nope"}"\n')
    result = run_beoboot("build", "-c", site, "-o", tmp_path / "out", check=False, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    hint = result.stderr.partition("hint: ")[2]
    assert "nope" in result.stderr and hint
    assert_hint_works(hint, "build")


@pytest.mark.skipif(not have_kernel() or not shutil.which("zstd"), reason="needs a kernel in /boot")
def test_an_unknown_module_names_the_config_key(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[images.stage1]\nmodules = ["no_such_module_beoboot"]\n')
    result = run_beoboot("build", "-c", site, "-o", tmp_path / "out", check=False, timeout=600)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{site}: images.stage1.modules: " in result.stderr and "no_such_module_beoboot" in result.stderr
