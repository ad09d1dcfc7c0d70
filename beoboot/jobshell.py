"""The commands a shell job runs by name: `bpsh 0 sh -c 'ls /scratch | wc -l'`, or a `#!/bin/sh` script.

A node holds only what jobs brought, so the shell alone would find none of them. This reads the shell
text the way the shell will, far enough to see which words sit where a command goes: the first word, and
the first after `|`, `;`, `&&`, `||`, `&`, `(`, `)`, a newline or a keyword that starts a command list
(`then`, `do`, `if`, ...), skipping NAME=value assignments. Each such word that names a program on the
job's PATH comes along (the caller resolves them; builtins and functions resolve to nothing, or to the
program of the same name, which is harmless). What it cannot see, a command built at run time (`$cmd`,
`$(...)`, eval), still needs --cache.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable

SHELLS = frozenset({"sh", "bash", "dash"})
MAX_SCRIPT = 256 << 10  # a longer script is not read; its commands come with --cache
SEPARATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "\n", "|&"})
# after these a command follows (or, for the closing ones, a separator)
COMMAND_KEYWORDS = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "{", "}", "time",
                              "fi", "done", "esac"})  # fmt: skip
# after these come words, not a command, up to the next separator (`for f in a b;`)
WORD_KEYWORDS = frozenset({"for", "case", "select", "function"})


def command_words(text: str) -> list[str]:
    """The words of shell `text` in command position, in order, each once."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()\n")
    lexer.whitespace = " \t"  # newlines separate commands
    lexer.commenters = "#"
    found: list[str] = []
    at_command = True
    try:
        for token in lexer:
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
    return found


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
