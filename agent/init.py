"""The agent as PID 1: mount the kernel file systems, read the config, say it is up, do the stage's work.

PID 1 must never exit: the kernel panics when init dies, and the panic hides the reason. Every failure is
printed on the console, then the node powers off (or, if even that fails, sleeps forever).

Mount and reboot system calls are made only by a real PID 1 and never in a dry run
(BEOBOOT_DRY_RUN=1 or --dry-run), so the agent can run on a build host, where a stray reboot(2) as root
would power off the build host itself.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import agent
from agent import cmdline
from agent.config import AGENT_CONFIG_PATH, AgentConfig
from agent.errors import AgentError
from agent.net import network
from agent.report import say
from agent.schema import Stage
from agent.system import console, kmodload, mounts, syscalls

DRY_RUN_ENV = "BEOBOOT_DRY_RUN"
SYSRQ_TRIGGER = "/proc/sysrq-trigger"


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    config_path: str = AGENT_CONFIG_PATH


def parse_options(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> Options:
    """Our flags from init's argv; anything else the kernel passes on its command line is ignored."""
    dry_run = environ.get(DRY_RUN_ENV, "") not in ("", "0")
    config_path = AGENT_CONFIG_PATH
    args = iter(argv)
    for arg in args:
        if arg == "--dry-run":
            dry_run = True
        elif arg == "--config":
            config_path = next(args, "")
            if not config_path:
                raise AgentError("--config needs a path", hint=f"pass --config {AGENT_CONFIG_PATH}")
        elif arg.startswith("--config="):
            config_path = arg.partition("=")[2]
    return Options(dry_run=dry_run, config_path=config_path)


def stage_number(stage: str) -> int:
    """The number of config.stage, one of the stages that run the agent ("stage2" -> 2)."""
    numbers = {str(s): s.number for s in Stage.with_agent() if s.number is not None}
    if stage in numbers:
        return numbers[stage]
    *first, last = numbers
    raise AgentError(f"unknown stage {stage!r} in the agent config", hint=f"expected {', '.join(first)} or {last}")


def read_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise AgentError(f"cannot read agent config {path}: {exc.strerror}", hint="rebuild the image") from None
    except UnicodeDecodeError:
        raise AgentError(f"agent config {path} is not UTF-8 JSON", hint="rebuild the image") from None
    try:
        return AgentConfig.from_json(text)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise AgentError(f"agent config {path} is not valid: {exc}", hint="rebuild the image") from None


def boot(options: Options, program: Callable[..., None] | None = None) -> int:
    dry_run = options.dry_run or os.getpid() != 1
    if dry_run:
        console.say("beoboot: dry run: no mount or reboot system calls")
    _try_attach_console()  # before mounting, so a failed mount can be reported if the console exists
    for call in mounts.mount_pseudo_filesystems(dry_run=dry_run):
        if dry_run:
            console.say(f"beoboot: dry run: would {call}")
    _try_attach_console()  # /dev/console now exists on devtmpfs even if the initramfs lacked it

    config = read_config(options.config_path)
    say(f"beoboot: stage {stage_number(config.stage)} agent up")
    say(f"beoboot: agent version {agent.__version__}")
    if config.modules_at_start:
        loaded = kmodload.load_at_start(config.modules_at_start, config.module_load_order, dry_run=dry_run, say=say)
        say(f"beoboot: modules loaded: {', '.join(loaded) or 'none'}")
    # the kernel's own uptime tells a fresh kernel (after kexec) from the one that was already running
    say(f"beoboot: kernel {os.uname().release}, up {_uptime():.1f} s")
    # beoboot.smoke on the kernel command line: a boot test of the image itself, nothing more;
    # beoboot.smoke=network: get on the network first (stages 1 and 2), then power off.
    smoke = cmdline.read().get("smoke")
    if smoke == "network" and stage_number(config.stage) in (1, 2):
        bring_up_network(config, dry_run=dry_run)
    if config.power_off_when_up or smoke is not None:
        power_off(dry_run=dry_run)
        return 0
    (program or program_named(config.program))(config, dry_run=dry_run)
    return 0


def program_named(module: str) -> Callable[..., None]:
    """The stage's program when no /init passed it in (`python -m agent` on a build host)."""
    try:
        return importlib.import_module(module).main
    except (ImportError, AttributeError) as exc:
        raise AgentError(
            f"the agent config names program {module!r}, which cannot run: {exc}", hint="rebuild the image"
        ) from None


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def bring_up_network(config: AgentConfig, *, dry_run: bool) -> network.NetworkState | None:
    try:
        return network.bring_up(config, dry_run=dry_run, cmdline_options=cmdline.read(), say=say)
    except network.NetworkError as exc:
        raise AgentError(exc.message, hint=exc.hint) from None


def power_off(*, dry_run: bool) -> None:
    """sync + reboot(2) power-off, then the sysrq 'o' fallback; if both fail, sleep forever."""
    console.say("beoboot: powering off")
    if dry_run:
        console.say(f"beoboot: dry run: would {syscalls.sync(dry_run=True)}")
        console.say(f"beoboot: dry run: would {syscalls.power_off(dry_run=True)}")
        return
    syscalls.sync(dry_run=False)
    try:
        syscalls.power_off(dry_run=False)
    except OSError as exc:
        console.say(f"beoboot: {exc}; trying {SYSRQ_TRIGGER}")
    try:
        with open(SYSRQ_TRIGGER, "w") as f:
            f.write("o")
    except OSError as exc:
        console.say(f"beoboot: cannot write {SYSRQ_TRIGGER}: {exc}")
    sleep_forever()


def sleep_forever() -> None:
    while True:
        time.sleep(3600)


def _try_attach_console() -> None:
    try:
        console.attach_to_console()
    except OSError:
        pass


def main(argv: list[str] | None = None, program: Callable[..., None] | None = None) -> int:
    """Entry point of /init (which passes its stage's program) and of `python -m agent` (which runs the program
    the config names). Returns only when not PID 1 or in a dry run."""
    is_init = os.getpid() == 1
    dry_run = True
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv, os.environ)
        dry_run = options.dry_run or not is_init
        return boot(options, program)
    except BaseException as exc:  # noqa: BLE001 -- PID 1 must report everything, even SystemExit
        if isinstance(exc, AgentError):
            console.say(f"beoboot: agent failed: {exc}")
        else:
            import traceback

            console.say("beoboot: agent failed with an unexpected error:")
            for line in traceback.format_exception(exc):
                console.say(line.rstrip("\n"))
        if not is_init:
            return 1
        try:
            power_off(dry_run=dry_run)
        finally:
            sleep_forever()
    return 1  # unreachable: power_off() or sleep_forever() never return for a real PID 1
