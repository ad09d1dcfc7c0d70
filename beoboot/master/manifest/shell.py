"""The commands a shell job runs by name: `bpsh 0 sh -c 'ls /scratch | wc -l'`, or a `#!/bin/sh` script.

A node holds only what jobs brought, so the shell alone would find none of them. This reads the shell
text the way the shell will, far enough to see which words sit where a command goes: the first word, and
the first after `|`, `;`, `&&`, `||`, `&`, `(`, `)`, a newline or a keyword that starts a command list
(`then`, `do`, `if`, ...), skipping NAME=value assignments. Each such word that names a program on the
job's PATH comes along (the caller resolves them; builtins and functions resolve to nothing, or to the
program of the same name, which is harmless). The text of each command substitution (`$(...)` and
backquotes, inside double quotes too) is read the same way. What it cannot see, a command built at run
time (`$cmd`, eval), still needs --cache.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Iterable, Iterator

SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "ksh93", "mksh", "zsh"})  # Bourne-like: read alike
MAX_SCRIPT = 256 << 10  # a longer script is not read; its commands come with --cache
SEPARATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "\n", "|&"})
OPERATORS = ("&&", "||", ";;", "|&", "|", "&", ";", "(", ")")  # longest first, as the shell reads them
MAX_DEPTH = 8  # substitutions within substitutions
# after these a command follows (or, for the closing ones, a separator)
COMMAND_KEYWORDS = frozenset(
    {"then", "do", "else", "elif", "if", "while", "until", "!", "{", "}", "time", "fi", "done", "esac"}
)
# after these come words, not a command, up to the next separator (`for f in a b;`)
WORD_KEYWORDS = frozenset({"for", "case", "select", "function"})


def command_words(text: str, depth: int = 0) -> list[str]:
    """The words of shell `text` in command position, in order, each once."""
    inner_texts, text = substitutions(text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()\n")
    lexer.whitespace = " \t"  # newlines separate commands
    lexer.commenters = "#"
    found: list[str] = []
    at_command = True
    try:
        for token in _operators_apart(lexer):
            if token in SEPARATORS or (token and set(token) == {"\n"}):
                at_command = True
            elif at_command and token in COMMAND_KEYWORDS:
                continue
            elif at_command and token in WORD_KEYWORDS:
                at_command = False
            elif at_command and _is_assignment(token):
                continue
            elif at_command:
                if token and not token.startswith(("$", "`")) and token not in found:
                    found.append(token)
                at_command = False
    except ValueError:  # unbalanced quotes: the shell will say so; keep what was seen
        pass
    if depth < MAX_DEPTH:
        for inner in inner_texts:
            found += [word for word in command_words(inner, depth + 1) if word not in found]
    return found


def _operators_apart(tokens: Iterable[str]) -> Iterator[str]:
    """shlex returns a run of punctuation as one token (`);` or `)|`): split it into the shell's operators."""
    for token in tokens:
        if not token or token.strip(";&|()") or token != token.strip():
            yield token
            continue
        while token:
            operator = next(op for op in OPERATORS if token.startswith(op))
            yield operator
            token = token[len(operator) :]


def substitutions(text: str) -> tuple[list[str], str]:
    """The text of each command substitution at the top level of `text` (`$(...)` and backquotes, outside
    single quotes), and `text` with each of them and each arithmetic `$((...))` replaced by `$_`: a word
    that is no command, so the substitution's own words are not read twice, once out of place."""
    found: list[str] = []
    kept: list[str] = []
    index, quote = 0, ""
    while index < len(text):
        char = text[index]
        end = -1
        if char == "\\":
            kept.append(text[index : index + 2])
            index += 2
            continue
        if quote != '"' and char == "'":
            close = text.find("'", index + 1)
            close = len(text) if close < 0 else close + 1
            kept.append(text[index:close])
            index = close
            continue
        if char == '"':
            quote = "" if quote else '"'
        elif char == "`":
            end = text.find("`", index + 1)
            end = len(text) if end < 0 else end
            found.append(text[index + 1 : end])
        elif text.startswith("$(", index):
            end = _closing_parenthesis(text, index + 2)
            if not text.startswith("$((", index):
                found.append(text[index + 2 : end])
        if end >= 0:
            kept.append("$_")
            index = end + 1
        else:
            kept.append(char)
            index += 1
    return found, "".join(kept)


def _closing_parenthesis(text: str, start: int) -> int:
    """Where the `)` closing a `$(` whose text starts at `start` is (the end of the text if none)."""
    depth, index = 1, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 1
        elif char == "'":
            end = text.find("'", index + 1)
            index = len(text) if end < 0 else end
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return len(text)


def shell_command_text(argv: tuple[str, ...], read_script: Callable[[str], str]) -> str:
    """The shell text a job runs: `sh -c TEXT` (options before -c allowed), or the script a shell is given
    (`sh script`), or "" when argv[0] is no shell. `read_script(path)` gives a script's text or ""."""
    text, script = _shell_operands(argv)
    if text is not None:
        return text
    return read_script(script) if script else ""


def shell_script(argv: tuple[str, ...]) -> str | None:
    """The script file a shell is given (`sh -e job.sh ARGS`), as written; None for `sh -c` and the rest."""
    return _shell_operands(argv)[1]


def _shell_operands(argv: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(the text of `sh -c TEXT`, the script of `sh SCRIPT`): at most one of them; both None for no shell."""
    if not argv or posixpath.basename(argv[0]) not in SHELLS:
        return None, None
    args = list(argv[1:])
    while args and args[0][:1] in ("-", "+") and args[0] != "--":
        option = args.pop(0)
        if option in ("-o", "+o") and args:
            args.pop(0)  # set -o's option name (pipefail)
        elif option[0] == "-" and not option.startswith("--") and "c" in option:
            return (args[0] if args else ""), None
    if args and args[0] == "--":
        args.pop(0)
    return None, (args[0] if args else None)


def _is_assignment(token: str) -> bool:
    name, equals, _ = token.partition("=")
    return bool(equals) and name.isidentifier()
