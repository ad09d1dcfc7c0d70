"""Config files as tables of settings, for every config loader of the builder and the master (beoboot.config,
beoboot.stages, beoboot.master.config). Each loader declares its file's keys once, as the fields of a frozen
dataclass made with setting(): the check of the value, the default, a line of help. From that table come the
parsing, whose errors are ConfigErrors naming the file, the dotted key (`images.stage3.modules`) and what is
allowed; the defaults; and the rendering back to commented TOML. The checks of what a value ends up in are
agent.values, shared with the agent, which runs them in the images.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields, is_dataclass
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


class Refused(ValueError):
    """A check's refusal in its own words, a whole predicate ("must be >= 1") instead of "is not allowed:
    expected ...", with a hint of what to write."""

    def __init__(self, predicate: str, hint: str | None = None) -> None:
        super().__init__(predicate)
        self.hint = hint


def checked(origin: str, key: str, value: Any, check: Callable[..., T], *args: Any, hint: str | None = None) -> T:
    """check(value, *args), or a ConfigError "ORIGIN: KEY = VALUE is not allowed: expected ..."."""
    try:
        return check(value, *args)
    except ValueError as exc:
        says = str(exc) if isinstance(exc, Refused) else f"is not allowed: expected {exc}"
        raise ConfigError(f"{origin}: {key} = {shown(value)} {says}", hint=getattr(exc, "hint", None) or hint) from None


# -- checks more than one file uses


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def one_of(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return value

    return check


# -- the tables


def setting(check: Any, help: str, default: Any = MISSING, *, toml: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is a key of the file. `check` turns the file's value into the field's: a function,
    a dataclass (the value is a table of its settings) or [a dataclass] (a list of such tables). Without a
    default the key must be in the file. `toml` turns the field's value back into the file's, for rendering."""
    return field(default=default, metadata={"check": check, "help": help, "toml": toml})


def settings(table: type) -> dict[str, Field[Any]]:
    """The fields of a dataclass that are keys of its file, in the order they are declared."""
    return {f.name: f for f in fields(table) if "check" in f.metadata}


def dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse(
    table: type, raw: dict[str, Any], origin: str, prefix: str = "", base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The checked value of every setting of `table` from the TOML table `raw`; a key missing from it is taken
    from `base` (a file this one overrides), else its default; without either it is an error."""
    known = settings(table)
    unknown = [dotted(prefix, key) for key in raw if key not in known]
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(f"{origin}: unknown keys {unknown}", hint=f"allowed keys{where}: " + ", ".join(known))
    out = {}
    for name, spec in known.items():
        if name in raw:
            out[name] = _value(spec.metadata["check"], raw[name], origin, dotted(prefix, name))
        elif base is not None and name in base:
            out[name] = base[name]
        elif spec.default is not MISSING:
            out[name] = spec.default
        else:
            raise ConfigError(
                f"{origin}: {dotted(prefix, name)} is missing", hint=f"add {name} = ... ({spec.metadata['help']})"
            )
    return out


def _value(check: Any, value: Any, origin: str, key: str) -> Any:
    if isinstance(check, list):
        items = checked(origin, key, value, _a, list, f"a list of tables {_outline(check[0])}")
        return tuple(_value(check[0], item, origin, f"{key}[{index}]") for index, item in enumerate(items))
    if isinstance(check, type) and is_dataclass(check):
        return check(**parse(check, checked(origin, key, value, _a, dict, f"a table {_outline(check)}"), origin, key))
    return checked(origin, key, value, check)


def _a(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(what)
    return value


def _outline(table: type) -> str:
    """A table's keys for a message: "{ template = ..., dest = ... }"."""
    return "{ " + ", ".join(f"{key} = ..." for key in settings(table)) + " }"


def parse_sections(
    sections: Mapping[str, Any], raw: dict[str, Any], origin: str, prefix: str = "", base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A file of tables ([build], [images.stage1]): each table's name maps to the checked values of its keys
    (parse), a table missing from the file to `base`'s, or to its keys' defaults."""
    allowed = "allowed sections: " + ", ".join(f"[{name}]" for name in _leaves(sections, prefix))
    for name, table in raw.items():
        key = dotted(prefix, name)
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{key}]", hint=allowed)
        checked(origin, key, table, _a, dict, f"a table [{key}]", hint=allowed)
    out = {}
    for name, spec in sections.items():
        table, below = raw.get(name, {}), None if base is None else base[name]
        if isinstance(spec, Mapping):
            out[name] = parse_sections(spec, table, origin, dotted(prefix, name), below)
        else:
            out[name] = parse(spec, table, origin, dotted(prefix, name), below)
    return out


def _leaves(sections: Mapping[str, Any], prefix: str) -> list[str]:
    return [
        leaf
        for name, spec in sections.items()
        for leaf in (_leaves(spec, dotted(prefix, name)) if isinstance(spec, Mapping) else [dotted(prefix, name)])
    ]


def render(values: Any) -> list[str]:
    """A settings dataclass's values as the lines of a TOML table, each with its help (TOML has no null: a None
    is a comment, as if the file left the key out)."""
    lines = []
    for name, spec in settings(type(values)).items():
        value, toml = getattr(values, name), spec.metadata["toml"]
        line = f"# {name} is not set" if value is None else f"{name} = {toml_value(toml(value) if toml else value)}"
        lines.append(f"{line}  # {spec.metadata['help']}")
    return lines


def render_sections(sections: Mapping[str, Any], tables: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The tables of a file (values of parse_sections' shape, as dataclasses) as TOML: [name], then its keys."""
    lines = []
    for name, spec in sections.items():
        if isinstance(spec, Mapping):
            lines += render_sections(spec, tables[name], dotted(prefix, name))
        else:
            lines += ["", f"[{dotted(prefix, name)}]", *render(tables[name])]
    return lines


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: { "rack1" = "n[0-31]" }
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items())
            + "}"
        )
    return json.dumps(str(value), ensure_ascii=False)  # TOML takes any printable character, not \ud83d surrogates
