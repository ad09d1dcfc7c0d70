"""Fuzzing the import scanner (beoboot/resolve/pyimports.py), which reads sysroot modules and users' programs.

Any text gives the imports or a PythonSourceError naming the file, never another exception, in bounded
time; any bytes decode to text or that error. Where the build host's own parser accepts the text, the
scanner finds what it finds.
"""

from __future__ import annotations

import ast
import time
import warnings

from hypothesis import given
from hypothesis import strategies as st

from beoboot.resolve.pyimports import PythonSourceError, decode_source, scan

SECONDS = 10  # far above what any of these inputs needs: a hang or a quadratic blow-up shows

# Pieces of Python that change how what follows them is read: quotes and prefixes, brackets, f-string
# fields, escapes, comments, line ends, and the words the scanner looks for.
PIECES = st.sampled_from(
    [
        "'", '"', "'''", '"""', "f", "r", "b", "rb", "u", "t", "{", "}", "{{", "}}", "(", ")", "[", "]",
        "\\", "\\\n", "\n", "\r", "\r\n", "#", " ", "\t", "\f", ":", "!", "!r", "=", ";", ",", ".", "...",
        "*", "<>", "0", "1", "x", "y", "import", "from", "as", "import ", "from .", " import ", "lazy",
        "import_module(", "__import__", "\\N{", "é", "\0", "$", "`", "yield", "raise", "if ", "match",
    ]
)  # fmt: skip
# Whole lines, many of them valid together, so that the scanner's answer is often compared with ast's.
LINES = st.sampled_from(
    [
        "import a.b as c, d", "from ..x import (y as z,", "   w)", "from . import x", "from __future__ import annotations",
        "x = 'import no'", "y = f'{a!r:>{w}}'", "z = f\"{'import q'}\"", "s = '''", "import inside_string",
        "'''", "if x: import e", "try: import f", "except ImportError: pass", "x = (", ")", "import g; import h",
        "# import comment", "x = \\", "  1", "__import__('i')", "import_module('j' 'k')", "raise X from Y",
        "def f():", "    import l", "    return (yield from m)", "print 'two'", "lazy import n", "x = rb'\\''",
    ]
)  # fmt: skip
TEXT = (
    st.lists(PIECES, max_size=60).map("".join)
    | st.text(max_size=200)
    | st.lists(LINES, max_size=12).map("\n".join)
    | st.lists(st.one_of(LINES, PIECES), max_size=20).map("".join)
)


def statements_by_ast(tree: ast.AST) -> list[tuple[int, str, tuple[str, ...]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [((node.lineno, node.col_offset, i), (0, a.name, ())) for i, a in enumerate(node.names)]
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names if a.name != "*")
            found.append(((node.lineno, node.col_offset, 0), (node.level, node.module or "", names)))
    return [statement for _, statement in sorted(found)]


@given(TEXT)
def test_any_text_gives_imports_or_a_typed_error_in_bounded_time(text):
    started = time.monotonic()
    try:
        found = scan(text, "fuzz.py")
    except PythonSourceError as exc:
        assert str(exc).startswith("fuzz.py, line ") and "\n" not in str(exc)
        found = None
    assert time.monotonic() - started < SECONDS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    assert found is not None, text  # the build host's parser reads it: so must the scanner
    assert [(s.level, s.module, s.names) for s in found if not s.dynamic] == statements_by_ast(tree)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_give_a_typed_error(data):
    try:
        text = decode_source(data, "fuzz.py")
    except PythonSourceError as exc:
        assert str(exc).startswith("fuzz.py, line ")
        return
    assert isinstance(text, str)
