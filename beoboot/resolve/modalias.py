"""Match a device's modalias against modules.alias patterns exactly as the kernel's tools do.

libkmod looks an alias up with glibc's fnmatch(pattern, key, 0): `*` and `?` match any characters (a `/`
or a leading `.` too), `[...]` a set (`!` or `^` first negates it, `]` first is a member, `a-z` a range
in byte order; `[z-a]` holds nothing), `\\` makes the next character literal, a `[` that is never closed
is a plain `[` (unless glibc's scan of it for a `[` meets a range or a `\\` cut off by the pattern's end:
then nothing matches, _unclosed_is_plain), and a pattern that ends in a lone `\\` matches nothing. Python's
fnmatch differs on `[^...]` (a literal `^` there), on `\\` (always literal) and on those endings: hence
this matcher. Character classes (`[:alpha:]`, `[.x.]`, `[=x=]`) are in no modules.alias and not supported.

tests/resolve/test_fuzz_modalias.py checks it against glibc's own fnmatch(3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

ANY_STRING = "*"
ANY_CHAR = "?"


@dataclass(frozen=True)
class CharSet:
    negated: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def has(self, ch: str) -> bool:
        inside = ch in self.chars or any(low <= ch <= high for low, high in self.ranges)
        return inside != self.negated


Token = str | CharSet  # "*", "?", a literal as a one-character string prefixed by "=", or a set
NEVER: tuple[Token, ...] = ("never",)  # a pattern glibc matches nothing with (see above)


@functools.lru_cache(maxsize=65536)
def compile_pattern(pattern: str) -> tuple[Token, ...]:
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if not tokens or tokens[-1] != ANY_STRING:
                tokens.append(ANY_STRING)
            i += 1
        elif ch == "?":
            tokens.append(ANY_CHAR)
            i += 1
        elif ch == "\\":
            if i + 1 == n:
                return NEVER
            tokens.append("=" + pattern[i + 1])
            i += 2
        elif ch == "[":
            found = _char_set(pattern, i + 1)
            if found is None or isinstance(found, str):  # never closed
                if not _unclosed_is_plain(pattern, i + 1):
                    return NEVER
                tokens.append("=[")
                i += 1
            else:
                charset, i = found
                tokens.append(charset)
        else:
            tokens.append("=" + ch)
            i += 1
    return tuple(tokens)


def _char_set(pattern: str, start: int) -> tuple[CharSet, int] | str | None:
    """The set that starts after a `[` at `start`, and the index after its `]`; None if it never closes;
    "never" if the pattern ends inside it with a lone `\\` or a range's `-` (glibc then matches nothing)."""
    n = len(pattern)
    i = start
    negated = i < n and pattern[i] in "!^"
    i += negated
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    first = True
    while True:
        if i >= n:
            return None
        ch = pattern[i]
        if ch == "]" and not first:
            return CharSet(negated, frozenset(chars), tuple(ranges)), i + 1
        first = False
        if ch == "\\":
            i += 1
            if i >= n:
                return "never"
            ch = pattern[i]
        i += 1
        if i + 1 == n and pattern[i] == "-":
            return "never"
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            high = pattern[i + 1]
            i += 2
            if high == "\\":
                if i >= n:
                    return "never"
                high = pattern[i]
                i += 1
            ranges.append((ch, high))  # a backward range holds nothing, as in glibc's C locale
        else:
            chars.add(ch)


def _unclosed_is_plain(pattern: str, start: int) -> bool:
    """A set that never closes is a plain `[`, so only a key's `[` can match it. glibc learns that the set
    is open only by scanning it for the key's character: it answers no match when it meets a range running
    to the pattern's end, or a lone `\\` there, before that character matched. This scan, for `[`, says
    whether the `[` stays (True) or the whole pattern matches nothing (False)."""

    def at(index: int) -> str:
        return pattern[index] if index < len(pattern) else "\0"

    p = start + (at(start) in "!^")
    c, p = at(p), p + 1
    while c != "\0":
        if c == "\\":
            if at(p) == "\0":
                return False
            c, p = at(p), p + 1
        is_range = at(p) == "-" and at(p + 1) not in ("\0", "]")
        if not is_range and c == "[":
            return _rest_is_plain(pattern, p)
        low, c, p = c, at(p), p + 1
        if c == "-" and at(p) != "]":
            high, p = at(p), p + 1
            if high == "\\":
                high, p = at(p), p + 1
            if high == "\0":
                return False
            if low <= "[" <= high:
                return _rest_is_plain(pattern, p)
            c, p = at(p), p + 1
    return True


def _rest_is_plain(pattern: str, p: int) -> bool:
    """After the key's `[` matched a member: glibc skips the rest of the set, and finds it open (True)
    unless it ends in a lone `\\` (False)."""
    while p < len(pattern):
        if pattern[p] == "\\" and p + 1 == len(pattern):
            return False
        p += 2 if pattern[p] == "\\" else 1
    return True


def matches(pattern: str, key: str) -> bool:
    """fnmatch(pattern, key, 0) == 0, as glibc answers it."""
    tokens = compile_pattern(pattern)
    if tokens is NEVER:
        return False
    # the usual wildcard walk: on a mismatch, go back to the last `*` and let it take one more character
    t = k = 0
    star_t, star_k = -1, 0
    while k < len(key):
        if t < len(tokens) and tokens[t] != ANY_STRING and _one(tokens[t], key[k]):
            t += 1
            k += 1
        elif t < len(tokens) and tokens[t] == ANY_STRING:
            star_t, star_k = t, k
            t += 1
        elif star_t >= 0:
            star_k += 1
            t, k = star_t + 1, star_k
        else:
            return False
    while t < len(tokens) and tokens[t] == ANY_STRING:
        t += 1
    return t == len(tokens)


def _one(token: Token, ch: str) -> bool:
    if isinstance(token, CharSet):
        return token.has(ch)
    return token == ANY_CHAR or token[1] == ch
