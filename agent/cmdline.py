"""The kernel command line: `beoboot.*` words are the agent's (beoboot.smoke, beoboot.master=URL)."""

from __future__ import annotations

import re

from agent import values
from agent.errors import AgentError

PROC_CMDLINE = "/proc/cmdline"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")  # float() would also take "nan", "inf" and "1e999"


class CmdlineError(AgentError):
    """A `beoboot.KEY=VALUE` word whose value the agent cannot use: the node stops rather than guess.
    Not a ValueError: no `except ValueError` around a caller may take it for its own and carry on."""


def _seconds(text: str) -> str:
    if not DECIMAL.fullmatch(text):
        raise ValueError("a number of seconds such as 30 or 2.5")
    values.number(float(text), 1, 86400)
    return text


def _pin(text: str) -> str:
    if not SHA256_HEX.fullmatch(text):
        raise ValueError("a sha256 in 64 lowercase hex digits")
    return text


# What the agent reads a value of; each is checked for what it becomes (a URL fetched, a timer, a pin).
CHECKS = {"master": values.http_url, "master_timeout": _seconds, "interface": values.interface}


def parse(text: str, source: str = PROC_CMDLINE) -> dict[str, str]:
    """`beoboot.x=y` -> {"x": "y"}; a bare `beoboot.x` -> {"x": ""}. Other words are the kernel's.
    CmdlineError for a value of a key the agent uses that it cannot use."""
    options = {}
    for word in text.split():
        if word.startswith("beoboot."):
            key, _, value = word.removeprefix("beoboot.").partition("=")
            check = _pin if key.startswith("pin.") else CHECKS.get(key)
            if check is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise CmdlineError(
                        f"{source}: beoboot.{key}={value[:80]!r} is not allowed: expected {exc}",
                        hint="fix the kernel command line in the boot loader config (beoboot-build writes it)",
                    ) from None
            options[key] = value
    return options


def read(path: str = PROC_CMDLINE) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    return parse(text, path)
