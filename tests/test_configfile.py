"""The settings-table mechanism (beoboot.configfile) on a table of its own: defaults, a file over a base,
nested tables and lists of them, and errors that name the file, the dotted key and what is allowed."""

from dataclasses import dataclass

import pytest

from beoboot.configfile import Refused, boolean, parse, parse_sections, parse_toml, render, setting
from beoboot.errors import ConfigError


def positive(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("a whole number")
    if value < 1:
        raise Refused("must be >= 1", hint="count from 1")
    return value


@dataclass(frozen=True)
class Row:
    name: str = setting(str, "a name")
    count: int = setting(positive, "how many", 1)


@dataclass(frozen=True)
class Table:
    size: int = setting(positive, "a size")
    fast: bool = setting(boolean, "go fast", False)
    label: str | None = setting(str, "a label", None)
    rows: tuple[Row, ...] = setting([Row], "the rows", ())


def test_defaults_fill_what_the_file_leaves_out_and_a_base_comes_before_them():
    assert parse(Table, {"size": 3}, "f.toml") == {"size": 3, "fast": False, "label": None, "rows": ()}
    assert parse(Table, {"fast": True}, "g.toml", base={"size": 3, "fast": False})["size"] == 3
    rows = parse(Table, {"size": 1, "rows": [{"name": "a"}, {"name": "b", "count": 2}]}, "f.toml")["rows"]
    assert rows == (Row("a", 1), Row("b", 2))


@pytest.mark.parametrize(
    "raw, message, hint",
    [
        ({}, "f.toml: t.size is missing", "add size = ... (a size)"),
        ({"size": 1, "colour": 2}, "f.toml: unknown keys ['t.colour']", "allowed keys in [t]: size, fast, label, rows"),
        ({"size": "big"}, "f.toml: t.size = 'big' is not allowed: expected a whole number", None),
        ({"size": 0}, "f.toml: t.size = 0 must be >= 1", "count from 1"),
        (
            {"size": 1, "rows": {}},
            "f.toml: t.rows = {} is not allowed: expected a list of tables { name = ..., count = ... }",
            None,
        ),
        ({"size": 1, "rows": [{"name": "a"}, 5]}, "f.toml: t.rows[1] = 5 is not allowed: expected a table {", None),
        ({"size": 1, "rows": [{"name": "a", "count": -1}]}, "f.toml: t.rows[0].count = -1 must be >= 1", None),
        ({"size": 1, "rows": [{}]}, "f.toml: t.rows[0].name is missing", None),
    ],
)
def test_errors_name_the_file_the_dotted_key_and_what_is_allowed(raw, message, hint):
    with pytest.raises(ConfigError) as err:
        parse(Table, raw, "f.toml", "t")
    assert err.value.message.startswith(message) and (hint is None or err.value.hint == hint)


def test_sections_are_tables_of_settings():
    sections = {"main": Table, "more": {"a": Table, "b": Table}}
    base = parse_sections(sections, {"main": {"size": 1}, "more": {"a": {"size": 2}, "b": {"size": 3}}}, "d")
    over = parse_sections(sections, {"more": {"b": {"fast": True}}}, "f.toml", base=base)
    assert over["more"]["b"] == {**base["more"]["b"], "fast": True} and over["main"] == base["main"]
    with pytest.raises(ConfigError, match=r"f.toml: unknown section \[more.c\]") as err:
        parse_sections(sections, {"more": {"c": {}}}, "f.toml", base=base)
    assert err.value.hint == "allowed sections: [more.a], [more.b]"
    with pytest.raises(ConfigError, match=r"f.toml: main = 1 is not allowed: expected a table \[main\]"):
        parse_sections(sections, {"main": 1}, "f.toml", base=base)


def test_a_flat_table_renders_as_toml_that_reads_back_the_same():
    @dataclass(frozen=True)
    class Flat:
        size: int = setting(positive, "a size")
        label: str | None = setting(str, "a label", None)

    lines = render(Flat(size=5))
    assert lines == ["size = 5  # a size", "# label is not set  # a label"]
    assert parse(Flat, parse_toml("\n".join(lines), "r"), "r") == {"size": 5, "label": None}
