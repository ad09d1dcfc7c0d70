"""What a Python module imports, read from its source by a tokenizer of its own, not the build host's `ast`.

Two callers need it, without running anything: the image builder (beoboot.resolve.pyruntime) walks a
sysroot's stdlib, whose Python may be newer than the build host's (3.11's parser cannot read 3.12's
f-strings, PEP 701), and the job describer (beoboot.master.manifest.imports) reads users' programs. The grammar of import statements
has not changed since 3.0, so tokens are enough: strings of every prefix (f-strings nested to any depth,
with their replacement fields read as code), comments, continuation lines and brackets are stepped over
as CPython's tokenizer does, and what starts a statement is matched against the import grammar.

Time is linear in the source, and nesting is bounded as CPython bounds it. Source that is not Python 3
as far as its tokens show (an unterminated string or bracket, a stray character, two names in a row as in
Python 2's `print x`) is a PythonSourceError naming the file and line, never a guess.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

from beoboot.errors import BeobootError

# Brackets and f-strings open at once: CPython's tokenizer stops at 200 brackets (MAXLEVEL), and so does
# this, so a file of a million "(" costs no more than its length.
MAX_NESTING = 200

# The names a call imports by, as `importlib.import_module("x")` or `__import__("x")`.
IMPORT_CALLS = frozenset({"import_module", "__import__"})

KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except finally for "
    "from global if import in is lambda nonlocal not or pass raise return try while with yield".split()
)
# Soft keywords that a name, a number or a string may follow: `match x:`, `case "a":`, `type T = int`.
SOFT_KEYWORDS = frozenset({"match", "case", "type"})
# Marks a lazy import (PEP 810): `lazy import json`; an ordinary name anywhere else.
LAZY = "lazy"


class PythonSourceError(BeobootError):
    """Source that cannot be read as Python 3: the message names the file and the line."""

    def __init__(self, filename: str, line: int, what: str) -> None:
        super().__init__(f"{filename}, line {line}: {what}")
        self.filename = filename
        self.line = line
        self.what = what


@dataclass(frozen=True)
class ImportStatement:
    """One import as written: `from ..a.b import c, d` is (2, "a.b", ("c", "d")); `import a.b as x` is
    (0, "a.b", ()); `from . import *` is (1, "", ())."""

    level: int  # the leading dots of a relative import
    module: str  # dotted; "" in `from . import c`
    names: tuple[str, ...]  # what a from-import takes, "*" left out
    dynamic: bool = False  # importlib.import_module("a.b") or __import__("a.b"): one literal name, nothing else


class Imported(NamedTuple):
    """An absolute module name a module imports. `required` is False for the `b` of `from a import b`,
    which is the module a.b only if such a file exists (else an attribute of a): not finding it is no
    error."""

    name: str
    required: bool


# -- reading a file --------------------------------------------------------------------------------------

_CODING = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.ASCII)


def decode_source(data: bytes, filename: str) -> str:
    """A source file's text as the interpreter reads it (PEP 263): UTF-8 unless a coding comment on one of
    its first two lines says otherwise, a UTF-8 byte order mark dropped."""
    encoding = "utf-8"
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    else:
        lines = data.split(b"\n", 2)
        for number, line in enumerate(lines[:2]):
            found = _CODING.match(line)
            if found:
                encoding = found.group(1).decode("ascii")
                break
            if number == 0 and not re.match(rb"^[ \t\f]*(?:[#\r\n]|$)", line):
                break  # a cookie counts on line 2 only below a comment or blank line 1
    try:
        return data.decode(encoding)
    except LookupError:
        raise PythonSourceError(filename, 1, f"unknown encoding {encoding!r} in its coding comment") from None
    except UnicodeDecodeError as exc:
        at = data.count(b"\n", 0, exc.start) + 1
        raise PythonSourceError(filename, at, f"not valid {encoding} ({exc.reason})") from None


# -- what a module imports ----------------------------------------------------------------------------------


def imports_of(
    source: str, module: str, is_package: bool, filename: str = "<module>", *, dynamic: bool = False
) -> list[Imported]:
    """The absolute names `module` (a package's __init__ when `is_package`) imports, in source order.
    `dynamic`: with the literal names of import_module()/__import__() calls too."""
    return resolve(scan(source, filename), module, is_package, dynamic=dynamic)


def resolve(
    statements: tuple[ImportStatement, ...] | list[ImportStatement],
    module: str,
    is_package: bool,
    *,
    dynamic: bool = False,
) -> list[Imported]:
    """Absolute names for the statements of `module`: `import a.b` -> a.b; `from a import b` -> a (required)
    and a.b (not: maybe an attribute); `from . import b` -> PACKAGE.b (required: nothing else it could be).
    A relative import beyond the top-level package, or in a script (`__main__`), fails at run time too:
    nothing for it."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Imported] = []
    for statement in statements:
        if statement.dynamic:
            if dynamic and statement.module:
                found.append(Imported(statement.module, True))
            continue
        base = absolute(statement.module, statement.level, None if module == "__main__" else package)
        if base is None:
            continue
        if statement.module:
            found.append(Imported(base, True))
        found.extend(Imported(f"{base}.{name}", not statement.module) for name in statement.names)
    return found


def absolute(name: str, level: int, package: str | None) -> str | None:
    """`name` imported `level` dots up from `package` (None: a script, which has none)."""
    if level == 0:
        return name
    if package is None:
        return None
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or (level - 1 == len(parts) and not name):
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name and base else (name or base)


# -- the scanner ---------------------------------------------------------------------------------------------

# token kinds
_NAME, _NUMBER, _STRING, _FSTRING, _FEND, _OP, _NEWLINE = range(7)

_DIGITS = r"[0-9](?:_?[0-9])*"
_EXPONENT = rf"[eE][-+]?{_DIGITS}"
_FLOAT = rf"(?:(?:{_DIGITS}\.(?:{_DIGITS})?|\.{_DIGITS})(?:{_EXPONENT})?|{_DIGITS}{_EXPONENT})"
# the order of Lib/tokenize.py's Number: imaginary, float, then integer literals, so `1if` is 1 then `if`
_NUMBER_RE = (
    rf"{_DIGITS}[jJ]|{_FLOAT}[jJ]|{_FLOAT}"
    r"|0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?0)*|[1-9](?:_?[0-9])*"
)
_OPERATORS = r"\*\*=|//=|>>=|<<=|\.\.\.|->|:=|<>|!=|\*\*|//|<<|>>|<=|>=|==|[-+*/%@&|^]=|[-+*/%@&|^~<>()\[\]{},:;.=!]"
# A whole plain string: a backslash takes the next character with it, even in a raw string (r"\"" is one
# string), and a one-quote string ends at a newline unless it is escaped.
_PLAIN_STRING = (
    r"(?:[rR][bB]?|[bB][rR]?|[uU])?"
    r"""(?:'''[^'\\]*+(?:(?:\\.|'(?!''))[^'\\]*+)*+'''"""
    r'''|"""[^"\\]*+(?:(?:\\.|"(?!""))[^"\\]*+)*+"""'''
    r"""|'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+'"""
    r"""|"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+")"""
)
# One token of code, after the blanks before it, the commonest kinds first. A name is not the prefix of
# a string (`rb"x"`); an identifier may hold any non-ASCII letter (checked when one does). f- and
# t-strings (PEP 750) are only opened here: their text and replacement fields are read one by one.
_CODE = re.compile(
    rf"""[ \t\f]*+(?:
    (?P<name>(?![rRbBuUfFtT]{{1,2}}['"])(?:[^\W\d]|[^\x00-\x7f])(?:\w|[^\x00-\x7f])*+)
    |(?P<number>{_NUMBER_RE})
    |(?P<op>{_OPERATORS})
    |(?P<nl>\n)
    |(?P<string>{_PLAIN_STRING})
    |(?P<fstring>(?:[fFtT][rR]?|[rR][fFtT])(?:'''|\"\"\"|'|"))
    |(?P<comment>\#[^\n]*+)
    |(?P<cont>\\\n)
    |(?P<unterminated>[rRbBuUfFtT]{{0,2}}['"])
    |(?P<end>\Z)
    |(?P<bad>.)
    )""",
    re.VERBOSE | re.DOTALL,
)
# The literal text of an f-string up to what matters: a brace, a backslash, its quote or a newline.
_FTEXT = {
    "'": re.compile(r"[^{}\\'\n]*+"),
    '"': re.compile(r'[^{}\\"\n]*+'),
    "'''": re.compile(r"[^{}\\']*+"),
    '"""': re.compile(r'[^{}\\"]*+'),
}
_NAMED_ESCAPE = re.compile(r"\\N\{[^}\n]*\}")
_CONVERSION = re.compile(r"!\w+[ \t\f]*+")
# What the statement reader looks at; everything else only has to be stepped over.
_INTERESTING = IMPORT_CALLS | {"import", "from", LAZY}
_CLOSING = {")": "(", "]": "[", "}": "{"}


@dataclass
class _Code:
    """Code being read: the file itself, or an f-string's replacement field."""

    brackets: list[tuple[str, int]]  # open, with where each opened
    field: bool  # a replacement field: `}`, `:` and `!` at its own level end its expression
    atom: bool = False  # the token before is a name, number or string
    atom_string: bool = False  # ... a string, which another string may follow
    soft: bool = False  # ... a soft keyword, which anything may follow


@dataclass
class _FString:
    quote: str
    raw: bool
    spec: int = 0  # in format specs, after a field's `:`: how many (a spec's fields have specs of their own)


class _Tokens:
    """(kind, text, offset) tokens of a source text, and where the statement reader must look. An f-string
    is _FSTRING ... _FEND around the tokens of its fields, each field between `{` and `}` operators; a
    logical line ends with _NEWLINE (only outside f-strings)."""

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        self.tokens: list[tuple[int, str, int]] = []
        self.interesting: list[tuple[int, int]] = []  # (token index, f-strings open around it)
        self._read()

    def fail(self, what: str, at: int) -> PythonSourceError:
        return PythonSourceError(self.filename, self.text.count("\n", 0, at) + 1, what)

    def _read(self) -> None:
        text = self.text
        size = len(text)
        top = _Code([], field=False)
        stack: list[_Code | _FString] = [top]
        pos = 0
        nesting = 0  # brackets and f-strings open
        while True:
            frame = stack[-1]
            if isinstance(frame, _FString):
                pos, nesting = self._fstring_text(frame, stack, pos, nesting)
                continue
            pos, nesting = self._code(frame, stack, pos, nesting, top)
            if pos > size:
                return

    def _code(self, frame: _Code, stack: list[_Code | _FString], pos: int, nesting: int, top: _Code) -> tuple[int, int]:
        """Tokens of code from `pos` until a frame begins or ends (an f-string, a field's end or format
        spec): where to go on, and the new nesting. Past the end of the text when the file ends."""
        text = self.text
        tokens = self.tokens
        append = tokens.append
        interesting = self.interesting
        fstrings = sum(1 for f in stack if isinstance(f, _FString))
        brackets = frame.brackets
        field = frame.field
        atom, atom_string, soft = frame.atom, frame.atom_string, frame.soft
        for found in _CODE.finditer(text, pos):
            kind = found.lastgroup
            if kind == "name":
                name = found["name"]
                if name in KEYWORDS:
                    atom = False
                    if name in _INTERESTING:
                        interesting.append((len(tokens), fstrings))
                else:
                    if atom and not soft:
                        raise self.fail(f"invalid syntax at {name!r}: not Python 3", found.start(kind))
                    if not name.isascii() and not unicodedata.normalize("NFKC", name).isidentifier():
                        raise self.fail(f"invalid character in identifier {name!r}", found.start(kind))
                    if name in _INTERESTING:
                        interesting.append((len(tokens), fstrings))
                    atom, atom_string, soft = True, False, name in SOFT_KEYWORDS
                append((_NAME, name, found.start()))
            elif kind == "op":
                op = found["op"]
                atom = False
                if field and not brackets and op[0] in "}:!" and op != "!=":
                    start = found.start(kind)
                    if op[0] == "}":  # the end of the field
                        stack.pop()
                        append((_OP, "}", start))
                        return start + 1, nesting - 1
                    parent = stack[-2]
                    assert isinstance(parent, _FString)
                    if op[0] == ":":  # `:=` too: at a field's own level a colon starts its format spec
                        stack.pop()
                        parent.spec += 1
                        return start + 1, nesting
                    conversion = _CONVERSION.match(text, start)
                    if conversion is None or not text.startswith((":", "}"), conversion.end()):
                        raise self.fail("f-string: invalid conversion", start)
                    frame.atom, frame.atom_string, frame.soft = False, False, False
                    return conversion.end(), nesting
                if op in "([{":
                    if nesting >= MAX_NESTING:
                        raise self.fail(f"more than {MAX_NESTING} brackets and f-strings nested", found.start(kind))
                    brackets.append((op, found.start(kind)))
                    nesting += 1
                elif op in ")]}":
                    if not brackets or brackets[-1][0] != _CLOSING[op]:
                        raise self.fail(f"unmatched {op!r}", found.start(kind))
                    brackets.pop()
                    nesting -= 1
                elif op == "!":
                    raise self.fail("invalid syntax at '!'", found.start(kind))
                elif op == "<>":
                    interesting.append((len(tokens), fstrings))
                append((_OP, op, found.start()))
            elif kind == "nl":
                if frame is top and not brackets:
                    atom = False
                    if tokens and tokens[-1][0] != _NEWLINE:
                        append((_NEWLINE, "", found.start(kind)))
            elif kind == "string":
                if atom and not atom_string and not soft:
                    raise self.fail("invalid syntax at a string: not Python 3", found.start(kind))
                atom, atom_string, soft = True, True, False
                append((_STRING, found["string"], found.start()))
            elif kind == "number":
                if atom and not soft:
                    raise self.fail("invalid syntax at a number: not Python 3", found.start(kind))
                atom, atom_string, soft = True, False, False
                append((_NUMBER, found["number"], found.start()))
            elif kind == "fstring":
                start = found.start(kind)
                if atom and not atom_string and not soft:
                    raise self.fail("invalid syntax at a string: not Python 3", start)
                if nesting >= MAX_NESTING:
                    raise self.fail(f"more than {MAX_NESTING} brackets and f-strings nested", start)
                opening = found["fstring"]
                quote = opening[-3:] if opening.endswith(("'''", '"""')) else opening[-1]
                frame.atom, frame.atom_string, frame.soft = True, True, False
                append((_FSTRING, opening, start))
                stack.append(_FString(quote, "r" in opening.lower()))
                return found.end(), nesting + 1
            elif kind == "end":
                if frame is not top:
                    raise self.fail("unterminated f-string", found.start(kind))
                if brackets:
                    raise self.fail(f"{brackets[-1][0]!r} was never closed", brackets[-1][1])
                return len(text) + 1, nesting
            elif kind == "unterminated":
                prefix = found["unterminated"].rstrip("'\"").lower()
                valid = prefix in ("", "r", "b", "u", "br", "rb")
                raise self.fail(
                    "unterminated string" if valid else f"invalid string prefix {prefix!r}", found.start(kind)
                )
            elif kind == "bad":
                raise self.fail(f"invalid character {found['bad']!r}", found.start(kind))
            # comments and continuation lines: nothing
        raise AssertionError("the code pattern matches up to the end")  # pragma: no cover

    def _fstring_text(self, frame: _FString, stack: list[_Code | _FString], pos: int, nesting: int) -> tuple[int, int]:
        """One step through an f-string's literal text (or a format spec's): where to go on."""
        text = self.text
        quote = frame.quote
        found = _FTEXT[quote].match(text, pos)
        assert found is not None  # it matches the empty string
        pos = found.end()
        if pos >= len(text) or text[pos] == "\n":
            raise self.fail("unterminated f-string", pos)
        char = text[pos]
        if char == quote[0]:
            if not text.startswith(quote, pos):
                return pos + 1, nesting  # one quote inside a triple-quoted f-string
            if frame.spec:
                raise self.fail("f-string: expecting '}'", pos)
            stack.pop()
            self.tokens.append((_FEND, quote, pos))
            return pos + len(quote), nesting - 1
        if char == "\\":
            if not frame.raw and text.startswith("\\N{", pos):
                escape = _NAMED_ESCAPE.match(text, pos)
                if escape is None:
                    raise self.fail("malformed \\N character escape", pos)
                return escape.end(), nesting
            if pos + 1 >= len(text):
                raise self.fail("unterminated f-string", pos)
            return pos + (1 if text[pos + 1] in "{}" else 2), nesting
        if char == "{":
            if text.startswith("{{", pos) and not frame.spec:
                return pos + 2, nesting
            if nesting >= MAX_NESTING:
                raise self.fail(f"more than {MAX_NESTING} brackets and f-strings nested", pos)
            self.tokens.append((_OP, "{", pos))
            stack.append(_Code([], field=True))
            return pos + 1, nesting + 1
        # "}"
        if frame.spec:  # the end of a format spec ends its field
            frame.spec -= 1
            self.tokens.append((_OP, "}", pos))
            return pos + 1, nesting - 1
        if text.startswith("}}", pos):
            return pos + 2, nesting
        raise self.fail("f-string: single '}' is not allowed", pos)


def scan(source: str, filename: str = "<source>") -> tuple[ImportStatement, ...]:
    """Every import in `source` (text, as decode_source gives it), in source order: statements wherever
    they are (in functions, under `if`, in `try`), and import_module()/__import__() calls whose one
    argument is a literal name (marked `dynamic`). PythonSourceError if it is not Python 3."""
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    if "\0" in text:
        raise PythonSourceError(filename, text.count("\n", 0, text.index("\0")) + 1, "a NUL byte")
    return tuple(_Statements(_Tokens(text, filename)).read())


class _Statements:
    """Import statements and calls, from the tokens."""

    def __init__(self, tokens: _Tokens) -> None:
        self.source = tokens
        self.tokens = tokens.tokens
        self.i = 0
        self.barry = False  # from __future__ import barry_as_FLUFL: `<>` is `!=`

    def fail(self, what: str) -> PythonSourceError:
        at = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.source.text)
        return self.source.fail(what, at)

    def peek(self, offset: int = 0) -> tuple[int, str, int]:
        index = self.i + offset
        return self.tokens[index] if index < len(self.tokens) else (_NEWLINE, "", len(self.source.text))

    def at_start(self, index: int) -> bool:
        """Whether the token at `index` starts a statement: the first, or after a newline, `;` or `:`
        (`if x: import y`; a `:` elsewhere cannot come before `import` or `from` in Python)."""
        if index == 0:
            return True
        kind, value, _ = self.tokens[index - 1]
        return kind == _NEWLINE or (kind == _OP and value in (";", ":"))

    def read(self) -> list[ImportStatement]:
        found: list[ImportStatement] = []
        tokens = self.tokens
        done = 0  # tokens before this belong to a statement already read
        for index, fstrings in self.source.interesting:
            if index < done:
                continue
            kind, value, _ = tokens[index]
            self.i = index
            if kind == _OP:  # `<>`
                if not self.barry:
                    raise self.fail("invalid syntax at '<>'")
            elif value in IMPORT_CALLS:
                call = self.call()
                if call is not None:
                    found.append(call)
            elif value == LAZY:
                continue
            elif value in ("import", "from"):
                start = self.at_start(index) or (
                    index >= 1 and tokens[index - 1][:2] == (_NAME, LAZY) and self.at_start(index - 1)
                )
                if start and not fstrings:
                    found.extend(self.statement())
                    done = self.i
                elif value == "import":
                    raise self.fail("invalid syntax: 'import' in the middle of a statement")
                # else the `from` of `raise X from Y` or `yield from`
        return found

    def skip_alias(self) -> None:
        """`as NAME` after an imported name: the binding, which says nothing about what is imported."""
        if self.peek()[:2] == (_NAME, "as"):
            self.i += 1
            self.identifier()

    def statement(self) -> list[ImportStatement]:
        """`import a.b as c, d` or `from ..a import (b as c, d)`, ending at a newline or `;`."""
        keyword = self.take_name()
        if keyword == "import":
            modules = []
            while True:
                modules.append(ImportStatement(0, self.dotted_name(), ()))
                self.skip_alias()
                if self.peek()[:2] != (_OP, ","):
                    break
                self.i += 1
            self.end_of_statement()
            return modules
        level = 0
        while self.peek()[0] == _OP and self.peek()[1] in (".", "..."):
            level += len(self.peek()[1])
            self.i += 1
        module = self.dotted_name() if self.peek()[0] == _NAME and self.peek()[1] != "import" else ""
        if not level and not module:
            raise self.fail("invalid syntax: 'from' with no module")
        if self.take_name() != "import":
            raise self.fail("invalid syntax: expected 'import'")
        names: list[str] = []
        if self.peek()[:2] == (_OP, "*"):
            self.i += 1
        else:
            parenthesised = self.peek()[:2] == (_OP, "(")
            if parenthesised:
                self.i += 1
            while True:
                names.append(self.identifier())
                self.skip_alias()
                if self.peek()[:2] != (_OP, ","):
                    break
                self.i += 1
                if parenthesised and self.peek()[:2] == (_OP, ")"):
                    break  # a trailing comma
            if parenthesised:
                if self.peek()[:2] != (_OP, ")"):
                    raise self.fail("invalid syntax: expected ')'")
                self.i += 1
        self.end_of_statement()
        if module == "__future__" and "barry_as_FLUFL" in names:
            self.barry = True
        return [ImportStatement(level, module, tuple(names))]

    def dotted_name(self) -> str:
        parts = [self.identifier()]
        while self.peek()[:2] == (_OP, "."):
            self.i += 1
            parts.append(self.identifier())
        return ".".join(parts)

    def identifier(self) -> str:
        kind, value, _ = self.peek()
        if kind != _NAME or value in KEYWORDS:
            raise self.fail("invalid syntax: expected a name")
        self.i += 1
        return value if value.isascii() else unicodedata.normalize("NFKC", value)

    def take_name(self) -> str:
        kind, value, _ = self.peek()
        if kind != _NAME:
            raise self.fail("invalid syntax")
        self.i += 1
        return value

    def end_of_statement(self) -> None:
        kind, value, _ = self.peek()
        if not (kind == _NEWLINE or (kind == _OP and value == ";")):
            raise self.fail("invalid syntax after an import")

    def call(self) -> ImportStatement | None:
        """import_module("name") or __import__("name") at self.i: one positional argument, a literal
        str (implicitly concatenated, in parentheses or not), nothing else; None for any other use."""
        tokens = self.tokens
        j = self.i + 1

        def op(index: int, value: str) -> bool:
            return index < len(tokens) and tokens[index][0] == _OP and tokens[index][1] == value

        if not op(j, "("):
            return None
        j += 1
        opened = 0
        while op(j, "("):
            opened += 1
            j += 1
        pieces = []
        while j < len(tokens) and tokens[j][0] == _STRING:
            pieces.append(tokens[j][1])
            j += 1
        if not pieces or (j < len(tokens) and tokens[j][0] == _FSTRING):
            return None
        for _ in range(opened):
            if not op(j, ")"):
                return None
            j += 1
        if op(j, ","):
            j += 1
        if not op(j, ")"):
            return None
        try:
            values = [_string_value(piece) for piece in pieces]
        except ValueError as exc:
            raise self.fail(f"invalid string: {exc}") from None
        if any(value is None for value in values):
            return None  # bytes
        return ImportStatement(0, "".join(v for v in values if v is not None), (), dynamic=True)


_ESCAPE = re.compile(
    r"\\(?:(\n)|([0-7]{1,3})|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|N\{([^}]*)\}|(.))", re.DOTALL
)
_SIMPLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}


def _string_value(token: str) -> str | None:
    """The value of a plain string literal token, escapes as in a str literal; None for bytes. ValueError
    for a malformed escape (`\\x4`, an unknown `\\N{...}` name), which makes the file no Python."""
    quote_at = 0
    while token[quote_at] not in "'\"":
        quote_at += 1
    prefix = token[:quote_at].lower()
    if "b" in prefix:
        return None
    triple = token.startswith(("'''", '"""'), quote_at) and len(token) - quote_at >= 6
    quote_size = 3 if triple else 1
    body = token[quote_at + quote_size : len(token) - quote_size]
    if "r" in prefix or "\\" not in body:
        return body
    return _ESCAPE.sub(_unescape, body)


def _unescape(found: re.Match[str]) -> str:
    newline, octal, hex2, hex4, hex8, named, other = found.groups()
    if newline is not None:
        return ""  # a continuation line inside the string
    if octal is not None:
        return chr(int(octal, 8))
    digits = hex2 or hex4 or hex8
    if digits is not None:
        if int(digits, 16) > 0x10FFFF:
            raise ValueError(f"illegal Unicode character {found.group(0)}")
        return chr(int(digits, 16))
    if named is not None:
        try:
            return unicodedata.lookup(named)
        except KeyError:
            raise ValueError(f"unknown Unicode character name {named!r}") from None
    if other in "xuUN":
        raise ValueError(f"malformed \\{other} escape")
    return _SIMPLE_ESCAPES.get(other, "\\" + other)
