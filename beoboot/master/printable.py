"""Text a node (or any client) chose, made safe to print in beoserv's log and on bpstat's terminal.

A log line is one line: a node whose log message holds a newline must not write a second line that reads
as beoserv's own ("... node 3 down"), and an escape sequence must not move a terminal's cursor or retitle
its window. Control characters, the Unicode line and paragraph separators, the bidirectional controls
(Unicode's Bidi_Control: overrides, isolates and marks, which make text read in another order than it is
stored) and the backslash itself are written as Python writes them in a repr: \\n, \\x1b, \\u202e, \\\\.
Everything else, non-ASCII letters included, is kept.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` (str() of it) on one line, with nothing a terminal or a log reader would act on."""
    text = str(text)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text
