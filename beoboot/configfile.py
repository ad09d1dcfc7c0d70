"""Reading a TOML config file and checking its values, for every config loader of the builder and the
master (beoboot.config, beoboot.stages, beoboot.master.config): each error is a ConfigError that names
the file, the key as a dotted path (`images.stage3.modules`) and what is wrong.

The value checks themselves are agent.values (shared with the agent, which runs them in the images).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

from beoboot.errors import ConfigError
from beoboot.regularfile import NotRegularFile, open_regular

T = TypeVar("T")
MAX_CONFIG_BYTES = 1 << 20  # a config is a page of settings; anything bigger is not one


def read_toml(path: str | os.PathLike[str], what: str = "config file", hint: str | None = None) -> dict[str, Any]:
    """The TOML document in the regular file at `path`, as read by a user who named it: a directory, FIFO
    or device is refused at once (opened non-blocking, so a FIFO with no writer cannot hang us)."""
    try:
        with open_regular(os.fspath(path)) as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint=hint) from None
    except NotRegularFile as exc:
        raise ConfigError(f"{what} {exc}", hint=f"name a TOML file{'; ' + hint if hint else ''}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", hint=hint) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file", hint=hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})", hint="TOML files are UTF-8") from None
    return parse_toml(text, f"{what} {path}")


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; arrays nested too deep
        raise ConfigError(f"{origin} is not a config TOML file: {exc}") from None


def shown(value: Any) -> str:
    """A value for a message: repr, cut short (a megabyte-long string is not worth printing)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def checked(origin: str, key: str, value: Any, check: Callable[..., T], *args: Any, hint: str | None = None) -> T:
    """check(value, *args), or a ConfigError "ORIGIN: KEY = VALUE is not allowed: expected ..."."""
    try:
        return check(value, *args)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {key} = {shown(value)} is not allowed: expected {exc}", hint=hint) from None
