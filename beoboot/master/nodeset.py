"""Node sets, as clush and pdsh write them: `n[0-99,120]`, `0-99`, `.3`, `n3`, `@up`, `@rack1`, and the
ClusterShell operators `,` (union), `!` (minus), `&` (both) and `^` (either, not both), applied left to
right. Text in, sorted node numbers out: the one parser of every command that takes nodes (bpsh, bpstat,
bpctl, bpcp) and of beoserv's `[groups]`.

Pure: `@name` is looked up through the `resolve` the caller gives (beoserv knows the nodes' states and its
config's groups; beoboot.master.selection), so this module knows no registry and no config.

What ClusterShell's NodeSet accepts, this accepts with the same nodes (tests/master/test_nodeset*.py hold
it to that), with these choices for a cluster whose nodes are numbers:
- a name is the hostname prefix (`n`) and a number; the number is the node (`n05` is node 5, as `n5`).
  A range keeps ClusterShell's padding rule (`n[00-10]` is nodes 0..10; `n[01-100]` is refused: the two
  ends are padded differently) and then, too, the number is the node.
- shorthands ClusterShell reads otherwise, kept from Scyld's bpsh: a bare number (`3`), a bare range
  (`0-99`, `n2-4`), `.3` (BeoNSS), and `all` (bpsh's old word, as `-a`: `@up`, every node that is up;
  `@all` is every node the master knows).
- refused, where ClusterShell would read another host name: any other name (`n1x`, `n[1-2]c[3-4]`),
  digits other than ASCII (`n١`, `n[1_0]`, `n[+1]`), an empty set (`""`).
Every refusal is a NodeSetError naming the bad part, in time bounded by the text's length: no range is
expanded before its size is known to fit MAX_NODES, and all of them together at most MAX_EXPANSION.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MAX_NODES = 65536  # nodes one set may name: a range beyond it is a typo, and expanding it would stall beoserv
MAX_EXPANSION = 4 * MAX_NODES  # nodes expanded over all parts of one text (n[0-65535] repeated is no set)
MAX_TEXT = 8192  # characters: a node set is a line someone typed or a config value
MAX_DIGITS = 9  # a node number is below a billion: a longer one is a typo (and int() of it costs)
OPERATORS = ",!&^"
SYNTAX = "n3, .3, 3; ranges 0-99 or n[0-99,120]; @up, @all, @GROUP; a,b  a!b (minus)  a&b (both)"
GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
DIGITS = re.compile(r"[0-9]+")
BARE_RANGE = re.compile(r"([0-9]+)-([0-9]+)")

ALL_WORD, ALL_WORD_MEANS = "all", "up"  # bpsh's old `all`, which was every node that is up

# `resolve(name)` gives the nodes of group `name`; a name it does not know is a LookupError whose text
# says which there are
Resolver = Callable[[str], Iterable[int]]


class NodeSetError(ValueError):
    """A node set that is not one: `text` is the whole set, `part` the bad piece, `why` what is wrong."""

    def __init__(self, text: str, part: str, why: str) -> None:
        self.text, self.part, self.why = text, part, why
        shown = f"{part!r} in {_short(text)!r}" if part != text else repr(_short(text))
        super().__init__(f"node set {shown}: {why}")

    hint = f"write nodes as {SYNTAX}"


def parse(text: str, resolve: Resolver | None = None, prefix: str = "n") -> list[int]:
    """The node numbers `text` names, sorted. `resolve(name)` gives the nodes of `@name` (and of `all`);
    without it a group is an error. `prefix` is the hostname prefix (beoserv's hostname_prefix)."""
    return sorted(_Parser(text, resolve, prefix).run())


def split_operands(text: str) -> list[tuple[str, str]]:
    """[(operator, operand)] at the top level (outside brackets); the first operator is ','. Brackets must
    pair and not nest; every operator has an operand on each side."""
    if len(text) > MAX_TEXT:
        raise NodeSetError(text, text, f"{len(text)} characters, more than the {MAX_TEXT} a node set may have")
    parts: list[tuple[str, str]] = []
    operator, start, depth = ",", 0, 0
    for index, char in enumerate(text):
        if char == "[":
            if depth:
                raise NodeSetError(text, text[start : index + 1], "a bracket inside brackets")
            depth = 1
        elif char == "]":
            if not depth:
                raise NodeSetError(text, text[start : index + 1], "a closing bracket with no opening one")
            depth = 0
        elif char in OPERATORS and not depth:
            parts.append((operator, _operand(text, text[start:index], operator, char)))
            operator, start = char, index + 1
    if depth:
        raise NodeSetError(text, text[start:], "a bracket that is not closed")
    parts.append((operator, _operand(text, text[start:], operator, "")))
    return parts


def _operand(text: str, raw: str, before: str, after: str) -> str:
    operand = raw.strip()
    if not operand:
        if not text.strip():
            raise NodeSetError(text, text, "no node named")
        where = f"before {after!r}" if after else f"after {before!r}"
        raise NodeSetError(text, text, f"an empty part {where}: each operator joins two sets")
    return operand


class _Parser:
    def __init__(self, text: str, resolve: Resolver | None, prefix: str) -> None:
        self.text, self.resolve, self.prefix = text, resolve, prefix
        self.expanded = 0

    def run(self) -> set[int]:
        nodes: set[int] = set()
        for operator, operand in split_operands(self.text):
            part = self._element(operand)
            if operator == ",":
                nodes |= part
            elif operator == "!":
                nodes -= part
            elif operator == "&":
                nodes &= part
            else:
                nodes ^= part
            if len(nodes) > MAX_NODES:
                raise NodeSetError(self.text, operand, f"more than {MAX_NODES} nodes")
        return nodes

    def _element(self, operand: str) -> set[int]:
        if operand.startswith("@") or operand == ALL_WORD:
            return self._group(operand)
        if operand.startswith("."):  # BeoNSS: .3, and .2-4 as bpsh took it
            return self._numbers(operand, operand[1:])
        if self.prefix and operand.startswith(self.prefix) and not operand[len(self.prefix) :].startswith("["):
            return self._numbers(operand, operand[len(self.prefix) :])
        body = operand[len(self.prefix) :] if self.prefix and operand.startswith(self.prefix) else operand
        if body.startswith("["):
            if not body.endswith("]"):
                raise NodeSetError(self.text, operand, f"text after the brackets: nodes are {self.prefix}N")
            return self._ranges(operand, body[1:-1])
        return self._numbers(operand, operand)

    def _group(self, operand: str) -> set[int]:
        name = ALL_WORD_MEANS if operand == ALL_WORD else operand[1:]
        if not GROUP_NAME.fullmatch(name):
            raise NodeSetError(self.text, operand, "not a group name (letters, digits, '_', '.', '-')")
        if self.resolve is None:
            raise NodeSetError(
                self.text, operand, "groups are beoserv's to resolve, not known here: name nodes (n[0-3])"
            )
        try:
            nodes = set(self.resolve(name))
        except LookupError as exc:
            raise NodeSetError(
                self.text, operand, f"no group @{name} ({exc.args[0] if exc.args else 'unknown'})"
            ) from None
        self._count(operand, len(nodes))
        return nodes

    def _numbers(self, operand: str, body: str) -> set[int]:
        """A number (3, 05) or a bare range (2-4)."""
        if DIGITS.fullmatch(body):
            return {self._number(operand, body)}
        found = BARE_RANGE.fullmatch(body)
        if found:
            first, last = self._number(operand, found[1]), self._number(operand, found[2])
            return self._span(operand, first, last, 1)
        raise NodeSetError(self.text, operand, "not a node")

    def _ranges(self, operand: str, inside: str) -> set[int]:
        nodes: set[int] = set()
        for piece in inside.split(","):
            piece = piece.strip()
            if not piece:
                raise NodeSetError(self.text, operand, "an empty range in the brackets")
            span, slash, step_text = piece.partition("/")
            low, dash, high = span.partition("-")
            low, high, step_text = low.strip(), high.strip(), step_text.strip()
            if not DIGITS.fullmatch(low) or (dash and not DIGITS.fullmatch(high)):
                raise NodeSetError(self.text, operand, f"{piece!r} is not a number or a range A-B")
            if slash and not (dash and DIGITS.fullmatch(step_text)):
                raise NodeSetError(self.text, operand, f"{piece!r}: a step is written A-B/STEP")
            if dash and _padded(low, high) and len(low) != len(high):
                raise NodeSetError(self.text, operand, f"{piece!r}: the two ends are padded differently")
            first = self._number(operand, low)
            last = self._number(operand, high) if dash else first
            step = self._number(operand, step_text) if slash else 1
            if step == 0:
                raise NodeSetError(self.text, operand, f"{piece!r}: a step of 0")
            nodes |= self._span(operand, first, last, step)
        return nodes

    def _number(self, operand: str, digits: str) -> int:
        if len(digits.lstrip("0")) > MAX_DIGITS:
            raise NodeSetError(self.text, operand, f"{digits[:20]!r} is beyond any node number")
        return int(digits)

    def _span(self, operand: str, first: int, last: int, step: int) -> set[int]:
        if last < first:
            raise NodeSetError(self.text, operand, f"the range {first}-{last} runs backwards: write {last}-{first}")
        size = (last - first) // step + 1
        if size > MAX_NODES:
            raise NodeSetError(self.text, operand, f"{size} nodes, more than the {MAX_NODES} one set may name")
        self._count(operand, size)
        return set(range(first, last + 1, step))

    def _count(self, operand: str, size: int) -> None:
        self.expanded += size
        if self.expanded > MAX_EXPANSION:
            raise NodeSetError(self.text, operand, f"the parts add up to more than {MAX_EXPANSION} nodes")


def _padded(*numbers: str) -> bool:
    return any(len(number) > 1 and number.startswith("0") for number in numbers)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def fold(numbers: Iterable[int], prefix: str = "n") -> str:
    """Node numbers as one node set, ranges folded: [0, 1, 2, 5] -> 'n[0-2,5]', [3] -> 'n3' (as
    ClusterShell prints a set)."""
    ordered = sorted(set(numbers))
    if not ordered:
        return ""
    if len(ordered) == 1:
        return f"{prefix}{ordered[0]}"
    spans: list[str] = []
    start = previous = ordered[0]
    for number in [*ordered[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return f"{prefix}[{','.join(spans)}]"
