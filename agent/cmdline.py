"""The kernel command line: `beoboot.*` words are the agent's (beoboot.smoke, beoboot.master=URL)."""

from __future__ import annotations

PROC_CMDLINE = "/proc/cmdline"


def parse(text: str) -> dict[str, str]:
    """`beoboot.x=y` -> {"x": "y"}; a bare `beoboot.x` -> {"x": ""}. Other words are the kernel's."""
    options = {}
    for word in text.split():
        if word.startswith("beoboot."):
            key, _, value = word.removeprefix("beoboot.").partition("=")
            options[key] = value
    return options


def read(path: str = PROC_CMDLINE) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read())
    except OSError:
        return {}
