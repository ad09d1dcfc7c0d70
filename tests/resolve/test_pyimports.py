"""beoboot.resolve.pyimports: the imports of Python source, read by a tokenizer of its own, are the ones `ast` finds.

The reference is the ast-based code pyruntime and jobimports had before (ORACLE, below): run by the build
host on its own stdlib and on generated programs (Hypothesis), and by a sysroot's newer Python on that
Python's stdlib, whose f-strings (PEP 701) the build host's parser cannot read.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import sysroots
from hypothesis import given
from hypothesis import strategies as st

from beoboot.resolve.pyimports import ImportStatement, PythonSourceError, decode_source, imports_of, resolve, scan

# The ast-based readers as pyruntime and jobimports had them, as text: the sysroot's interpreter runs it too.
ORACLE = r'''
import ast
import warnings

NESTED_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def statements(tree):
    """pyruntime's walk: every statement, however nested, in its order (a stack, so not source order)."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for body in NESTED_BODIES:
            children = getattr(node, body, None)
            if children:
                stack.extend(children)
    return found


def absolute(name, level, package):
    if level == 0:
        return name
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not name):
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name and base else (name or base)


def pyruntime_imports_of(nodes, module, is_package):
    """pyruntime.imports_of: (absolute name, required)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((alias.name, True) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node.module, node.level, package)
            if base is None:
                continue
            if node.module:
                found.append((base, True))
            found.extend((f"{base}.{alias.name}", not node.module) for alias in node.names if alias.name != "*")
    return found


def is_import_call(node):
    function = node.func
    name = function.id if isinstance(function, ast.Name) else function.attr if isinstance(function, ast.Attribute) else ""
    return (
        name in ("import_module", "__import__")
        and len(node.args) == 1
        and not node.keywords
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def jobimports_parse(tree, nodes, text):
    """jobimports._parse_imports: (level, module, names), import_module("x") calls as (0, "x", ())."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names if a.name != "*")))
    if "import_module" in text or "__import__" in text:  # ast.walk is slow: only where a call may be
        found += [(0, n.args[0].value, ()) for n in ast.walk(tree) if isinstance(n, ast.Call) and is_import_call(n)]
    return found


def jobimports_names(module, is_package, parsed):
    """jobimports._absolute_names."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for level, name, imported in parsed:
        if level:
            base = package.split(".") if package else []
            if level - 1 > len(base) or module == "__main__":
                continue
            base = base[: len(base) - (level - 1)]
            name = ".".join([*base, name] if name else base)
        if not name:
            continue
        names.append(name)
        names += [f"{name}.{item}" for item in imported]
    return names


def in_source_order(nodes):
    """Every import statement in source order, one per imported module: (level, module, names)."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [((node.lineno, node.col_offset, i), (0, a.name, ())) for i, a in enumerate(node.names)]
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names if a.name != "*")
            found.append(((node.lineno, node.col_offset, 0), (node.level, node.module or "", names)))
    return [statement for _, statement in sorted(found)]


def calls(tree):
    return sorted(n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call) and is_import_call(n))


def read(text, module, is_package):
    """Everything the oracle says of one text, as plain JSON data; None when ast cannot parse it."""
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old test data
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    nodes = [node for node in statements(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    parsed = jobimports_parse(tree, nodes, text)
    return {
        "statements": [list(s[:2]) + [list(s[2])] for s in in_source_order(nodes)],
        "calls": calls(tree) if "import_module" in text or "__import__" in text else [],
        "pyruntime": sorted(list(i) for i in pyruntime_imports_of(nodes, module, is_package)),
        "jobimports": sorted(set(jobimports_names(module, is_package, parsed))),
    }
'''
oracle: dict[str, object] = {}
exec(compile(ORACLE, "ORACLE", "exec"), oracle)


def scanned(text: str, module: str = "m", is_package: bool = False) -> dict[str, object]:
    """What the scanner says, in the oracle's form."""
    found = scan(text, "<test>")
    statements = [s for s in found if not s.dynamic]
    return {
        "statements": [[s.level, s.module, list(s.names)] for s in statements],
        "calls": sorted(s.module for s in found if s.dynamic),
        "pyruntime": sorted([name, required] for name, required in resolve(found, module, is_package)),
        "jobimports": sorted({i.name for i in resolve(found, module, is_package, dynamic=True)}),
    }


def agrees(text: str, expected: dict[str, object], module: str, is_package: bool) -> None:
    got = scanned(text, module, is_package)
    assert got["statements"] == expected["statements"]
    assert got["calls"] == expected["calls"]
    if module != "__main__":  # pyruntime reads no module of that name (its script is /init): no rule for it
        assert got["pyruntime"] == expected["pyruntime"]
    # jobimports listed a from-import's package itself too (`from . import x` -> the package): always the
    # module's own package or one above it, which was found before the module was, so nothing changes
    new, old = set(got["jobimports"]), set(expected["jobimports"])  # type: ignore[call-overload]
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    ancestors = {".".join(parts[:end]) for end in range(1, len(parts) + 1)}
    assert new <= old and old - new <= ancestors, (old - new, new - old)


# -- what the scanner reads ----------------------------------------------------------------------------------


def S(level: int, module: str, *names: str, dynamic: bool = False) -> ImportStatement:  # noqa: N802
    return ImportStatement(level, module, names, dynamic)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import a.b as c, d", [S(0, "a.b"), S(0, "d")]),
        ("from ..x import (y as z,\n   w,)", [S(2, "x", "y", "w")]),
        ("from . import x", [S(1, "", "x")]),
        ("from . . x import y", [S(2, "x", "y")]),
        ("from ...x import y\nfrom .... import z", [S(3, "x", "y"), S(4, "", "z")]),
        ("from .import x", [S(1, "", "x")]),
        ("from x import *", [S(0, "x")]),
        ("from __future__ import annotations", [S(0, "__future__", "annotations")]),
        ("import a; import b;from c import d", [S(0, "a"), S(0, "b"), S(0, "c", "d")]),
        ("if x: import a\nelse: from b import c", [S(0, "a"), S(0, "b", "c")]),
        ("try:\n    import a\nexcept ImportError:\n    a = None", [S(0, "a")]),
        ("def f():\n    class C:\n        import deep", [S(0, "deep")]),
        ("match x:\n    case 'a': import m", [S(0, "m")]),
        ("import \\\n  a . \\\n b", [S(0, "a.b")]),
        ("x = (\n import_module('a'))", [S(0, "a", dynamic=True)]),
        # what is not an import, though it says so
        ("'''\nimport a\n'''\n# import b\nx = 'import c'  # import d", []),
        ('x = f"{y!r} import z"', []),
        ("raise X from Y\ndef g():\n    yield from h", []),
        ("from_ = 1\nimportant = from_", []),
        # strings of every prefix, f-strings nested, quotes reused (PEP 701), fields holding code
        ("a = rb'\\'' + Br'x' + u'y' + R'''z''' + b\"\"\"w\"\"\"\nimport q", [S(0, "q")]),
        ("s = f'{a[\"b\"]:>{width}} {c!r} {d=} {e:%Y-%m}' 'x'\nimport q", [S(0, "q")]),
        ('s = f"{f"{f"{1}"}"}"\nimport q', [S(0, "q")]),
        ("s = f'''{\n  x  # a comment in a field\n}'''\nimport q", [S(0, "q")]),
        ("s = f'{x:{y:{z}}}' rf'\\{w}' f'\\N{DASH}{v}' f'{{}}'\nimport q", [S(0, "q")]),
        ("s = f'{__import__(\"a\")}'", [S(0, "a", dynamic=True)]),
        ("s = t'{x}' tr'{y}'\nimport q", [S(0, "q")]),  # template strings (PEP 750)
        # import_module()/__import__() with one literal name, however written
        (
            "importlib.import_module('a.b')\n__import__(('c'),)\nimport_module('d' \"e\")\nimport_module('\\x66')",
            [S(0, "a.b", dynamic=True), S(0, "c", dynamic=True), S(0, "de", dynamic=True), S(0, "f", dynamic=True)],
        ),
        (
            "import_module(b'a')\nimport_module(('a',))\nimport_module(n)\nimport_module('a', p)\nimport_module(f'a')",
            [],
        ),
        ("import_module(name='a')\nimport_module\n('a')\ndef __import__(name): pass", []),
        # soft keywords and lazy imports (PEP 810)
        ("type X = int\nmatch = 1\nlazy import json\nlazy from a import b", [S(0, "json"), S(0, "a", "b")]),
        ("x = 1if y else 2\nz = 0x1for y in x", []),
        ("import ｏｓ", [S(0, "os")]),  # identifiers are NFKC-normalised, as ast does
        ("from __future__ import barry_as_FLUFL\nx = 1 <> 2", [S(0, "__future__", "barry_as_FLUFL")]),
        ("x = 1\r\nimport a\rimport b", [S(0, "a"), S(0, "b")]),
    ],
)
def test_scan_reads_imports(source, expected):
    assert list(scan(source)) == expected


@pytest.mark.parametrize(
    ("source", "line", "what"),
    [
        ("print 'python 2'\nimport a", 1, "not Python 3"),
        ("x = 1\nprint x", 2, "not Python 3"),
        ("x = 10L", 1, "not Python 3"),
        ("x = 0777", 1, "not Python 3"),
        ("exec 'code'", 1, "not Python 3"),
        ("x = `y`", 1, "invalid character '`'"),
        ("x = 1 <> 2", 1, "'<>'"),
        ("x = ur'a'", 1, "invalid string prefix 'ur'"),
        ("x = 'abc\ny = 2", 1, "unterminated string"),
        ('x = """abc', 1, "unterminated string"),
        ("x = (\n1", 1, "'(' was never closed"),
        ("x = (1]", 1, "unmatched ']'"),
        ("x = f'{a'", 1, "unterminated"),
        ("x = f'{a}}'", 1, "single '}'"),
        ("x = f'{a!}'", 1, "conversion"),
        ("x = 1 \\ 2", 1, "invalid character '\\\\'"),
        ("x = 1\ny = $", 2, "invalid character '$'"),
        ("import a (b)", 1, "after an import"),
        ("from a import (b", 1, "never closed"),
        ("from a import b,", 1, "expected a name"),
        ("from import b", 1, "no module"),
        ("import", 1, "expected a name"),
        ("x = import a", 1, "middle of a statement"),
        ("x = 1\0", 1, "NUL"),
        ("x = caf€", 1, "invalid character"),
        ("import_module('\\x4')", 1, "malformed"),
    ],
)
def test_what_is_not_python_3_is_an_error_naming_file_and_line(source, line, what):
    with pytest.raises(PythonSourceError) as raised:
        scan(source, "/usr/lib/python3.99/bad.py")
    assert raised.value.line == line
    assert what in str(raised.value)
    assert str(raised.value).startswith(f"/usr/lib/python3.99/bad.py, line {line}: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "source",
    [
        "(" * 1_000_000,
        "f'{" * 300_000,
        "'" * 1_000_001,
        '"""' + "\\" * 1_000_000,
        "x = " + "'a' " * 300_000,
        "import a.b.c.d, e\n" * 100_000,
        "[" * 150 + "]" * 150 + "\n" + "x\\\n" * 300_000,
    ],
)
def test_time_is_linear_in_the_source_and_nesting_is_bounded(source):
    started = time.monotonic()
    try:
        scan(source)
    except PythonSourceError:
        pass
    assert time.monotonic() - started < 10


def test_nesting_stops_at_cpython_s_limit():
    scan("(" * 199 + ")" * 199)
    with pytest.raises(PythonSourceError, match="more than 200"):
        scan("(" * 201 + ")" * 201)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"import a\n", "import a\n"),
        (b"\xef\xbb\xbfimport a\n", "import a\n"),  # a byte order mark is dropped, as the interpreter does
        (b"# -*- coding: latin-1 -*-\nx = '\xe9'\n", "# -*- coding: latin-1 -*-\nx = '\xe9'\n"),
        (b"#!/usr/bin/python3\n# vim: set fileencoding=iso-8859-15 :\nx = '\xa4'\n", None),
        (b"x = 1  # coding: latin-1\ny = '\xc3\xa9'\n", "x = 1  # coding: latin-1\ny = '\xe9'\n"),
    ],
)
def test_decode_source_follows_pep_263(data, text):
    decoded = decode_source(data, "f.py")
    if text is None:
        assert decoded.endswith("x = '\u20ac'\n")
    else:
        assert decoded == text


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"x = 1\ny = '\xff'\n", "f.py, line 2: not valid utf-8"),
        (b"# coding: no-such-codec\n", "unknown encoding 'no-such-codec'"),
    ],
)
def test_undecodable_source_is_an_error(data, what):
    with pytest.raises(PythonSourceError, match=what):
        decode_source(data, "f.py")


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from . import x", "p.q", False, [("p.x", True)]),
        ("from .. import x", "p.q", False, []),  # beyond the top-level package
        ("from .m import x", "__main__", False, []),  # a script has no package
        ("from . import *", "p", True, []),
        ("import_module('a')", "m", False, []),
    ],
)
def test_resolve(source, module, is_package, expected):
    assert imports_of(source, module, is_package) == expected


def test_resolve_with_dynamic_imports():
    found = imports_of("import_module('a.b')\nimport_module('')", "m", False, dynamic=True)
    assert found == [("a.b", True)]


# -- the same imports as ast: generated programs ---------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "os", "pkg", "match", "type", "case", "_x", "αβ", "lazy"])
DOTTED = st.lists(NAMES, min_size=1, max_size=3).map(".".join)
ALIASES = st.lists(st.tuples(NAMES, st.none() | NAMES), min_size=1, max_size=3)


def _as(pairs):
    return ", ".join(name if alias is None else f"{name} as {alias}" for name, alias in pairs)


IMPORT = st.builds(
    lambda modules: f"import {_as(modules)}", st.lists(st.tuples(DOTTED, st.none() | NAMES), min_size=1, max_size=3)
)
FROM_IMPORT = st.builds(
    lambda dots, module, names, parens, trailing: (
        f"from {dots}{module} import " + (f"({_as(names)}{',' if trailing else ''}\n)" if parens else _as(names))
    ),
    st.sampled_from(["", ".", "..", "...", ". ."]),
    DOTTED,
    ALIASES,
    st.booleans(),
    st.booleans(),
) | st.builds(lambda dots, names: f"from {dots} import {_as(names)}", st.sampled_from([".", "..", "..."]), ALIASES)
STAR = st.builds(lambda module: f"from {module} import *", DOTTED)
LITERAL = st.sampled_from(
    [
        "'import x'",
        '"from y import z"',
        "'''\nimport w\n'''",
        'rb"\\\\"',
        "u'\\''",
        "R'\\\"'",
        "'a' 'b'",
        "f'{x!r:>{w}}'",
        "f\"{'import q'}\"",
        "f'''{\nx\n}'''",
        "f'{ {1: 2}[1] }'",
        "f'{x:{y}.{z}}'",
        "f'{{literal}}'",
        "f'{(lambda: 1)()}'",
        "f'\\N{BULLET} {x}'",
        "'\\N{BULLET}'",
        "0x1f",
        "1_000.5e-3j",
        ".5",
        "...",
    ]
)
CALL = st.builds(
    lambda function, argument: f"{function}({argument})",
    st.sampled_from(["import_module", "importlib.import_module", "__import__", "x.__import__"]),
    st.sampled_from(["'m'", "('m')", "'m',", "'a' 'b'", "b'm'", "'m', p", "name='m'", "f'm'", "('m',)", "'\\x6d'"]),
)
EXPRESSION = st.one_of(LITERAL, CALL, NAMES, st.builds(lambda a, b: f"({a},\n {b})", LITERAL, CALL))
SIMPLE = st.one_of(
    IMPORT,
    FROM_IMPORT,
    STAR,
    st.builds(lambda name, value: f"{name} = {value}", NAMES, EXPRESSION),
    st.builds(lambda value: f"x = {value}  # import not_this", EXPRESSION),
    st.just("raise X from Y"),
    st.just("pass"),
)
LINE = st.lists(SIMPLE, min_size=1, max_size=3).map("; ".join)


@st.composite
def programs(draw):
    """Lines of imports and look-alikes, some inside blocks (if, try/except, def, class, with, match)."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        header = draw(
            st.sampled_from(["", "if x:", "try:", "def f():", "class C:", "with a as b:", "while x:", "for i in x:"])
        )
        if not header:
            lines.append(draw(LINE))
        elif draw(st.booleans()):
            lines.append(f"{header} {draw(LINE)}")
        else:
            lines += [header, f"    {draw(LINE)}", f"    {draw(LINE)}"]
        if header == "try:":
            lines += ["except ImportError:", f"    {draw(LINE)}"]
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# import comment", "x = \\\n    1", "import \\\n  a"])))
    return "\n".join(lines) + "\n"


@given(programs(), st.sampled_from([("m", False), ("p.q", False), ("p", True), ("__main__", False)]))
def test_generated_programs_give_what_ast_gives(text, where):
    module, is_package = where
    expected = oracle["read"](text, module, is_package)  # type: ignore[operator]
    if expected is None:
        with pytest.raises(PythonSourceError):
            scan(text)
        return
    agrees(text, expected, module, is_package)


# -- the same imports as ast: the build host's stdlib, and a newer Python's ----------------------------------------


def _module_of(path: Path, top: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(top).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts) or "__init__", is_package


def _python_files(top: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(top):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        found += [Path(directory, f) for f in sorted(files) if f.endswith(".py")]
    return [path for path in found if path.is_file()]


def test_every_module_of_the_build_hosts_stdlib_gives_what_ast_gives():
    top = Path(sysconfig.get_paths()["stdlib"])
    files = _python_files(top)
    assert len(files) > 500
    rejected = []
    for path in files:
        try:
            text = decode_source(path.read_bytes(), str(path))
        except PythonSourceError:
            continue  # its bytes do not decode: the old code failed on them first (tests of bad encodings)
        module, is_package = _module_of(path, top)
        expected = oracle["read"](text, module, is_package)  # type: ignore[operator]
        if expected is None:  # deliberately bad test data, Python 2 files of lib2to3's tests
            with pytest.raises(PythonSourceError):
                scan(text, str(path))
            rejected.append(path.name)
            continue
        agrees(text, expected, module, is_package)
    print(f"\n{len(files)} files, {len(rejected)} not Python 3 for both: {', '.join(rejected)}")


def _sysroot_python():
    """The trixie sysroot's python3.13 as build.py setup made it, run as pyruntime runs it; None without it."""
    from beoboot.resolve import pyruntime
    from beoboot.resolve.sysroot import Sysroot

    root = sysroots.sysroot("trixie")
    if root is None:
        return None
    sysroot = Sysroot(root)
    python = pyruntime.find_sysroot_python(sysroot)
    return sysroot, python, pyruntime.sysroot_compiler(sysroot, python)


# Runs in the sysroot's interpreter: the oracle's answer for each file named on stdin.
_ORACLE_CHILD = """
import json, sys
for path, module, is_package in json.load(sys.stdin):
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        print(json.dumps([path, "undecodable"]))
        continue
    print(json.dumps([path, read(text, module, is_package)]))
"""


def test_every_module_of_a_newer_pythons_stdlib_gives_what_its_own_ast_gives():
    found = _sysroot_python()
    if found is None:
        pytest.skip(sysroots.SKIP_REASON.format(suite="trixie"))
    sysroot, python, compiler = found
    assert python.version > (3, 11)
    if compiler is None:
        pytest.skip("the sysroot's python does not run here")
    top = sysroot.host(python.stdlib_dir)
    files = _python_files(top)
    request = json.dumps([(str(path), *_module_of(path, top)) for path in files])
    child = subprocess.run(
        [*compiler.argv, "-S", "-s", "-c", ORACLE + _ORACLE_CHILD],
        input=request,
        capture_output=True,
        text=True,
        env=dict(compiler.env),
        timeout=600,
        check=True,
    )
    answers = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(answers) == len(files) > 500
    newer = 0
    for path, expected in answers:
        if expected == "undecodable":
            continue
        text = Path(path).read_text()
        module, is_package = _module_of(Path(path), top)
        assert expected is not None, path  # the sysroot's stdlib is its own Python's
        try:
            ast.parse(text)
        except SyntaxError:
            newer += 1  # the build host's parser cannot read it: PEP 701 f-strings, PEP 695 type statements
        agrees(text, expected, module, is_package)
    assert newer > 0  # else this proves no more than the build host's stdlib did
    print(f"\n{len(answers)} files of Python {python.version}, {newer} beyond the build host's parser")
