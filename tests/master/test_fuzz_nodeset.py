"""Node sets against ClusterShell's NodeSet, by Hypothesis: for texts built from the node-set grammar with
its odd corners (padding, steps, reversed and empty ranges, stray brackets, spaces, operators without an
operand, other names), beoboot.master.nodeset gives the oracle's nodes or refuses what the oracle refuses
or reads as hosts that are no node. And any text at all is a list of nodes or a NodeSetError, quickly."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from nodeset_oracle import REFUSED, oracle

from beoboot.master.nodeset import NodeSetError, parse

numbers = st.integers(0, 300).map(str)
# one padding width per text: ClusterShell's n0 and n00 are two hosts, beoboot's the one node 0, so texts
# that spell a node two ways (n0!n00) part ways by design (tests/master/test_nodeset.py has them)
width = st.shared(st.integers(0, 3), key="width")
padded = st.builds(lambda w, n: n.zfill(w), width, numbers)
spaces = st.sampled_from(["", "", "", " ", "\t"])


@st.composite
def ranges(draw):
    low, high = draw(padded), draw(st.one_of(padded, st.just("")))
    text = low if not high and draw(st.booleans()) else f"{low}-{high}"
    if draw(st.integers(0, 4)) == 0:
        text += "/" + draw(st.one_of(padded, st.just("")))
    return draw(spaces) + text + draw(spaces)


@st.composite
def elements(draw):
    kind = draw(st.integers(0, 9))
    # one spelling of the nodes per text (n3 or 3: two hosts to ClusterShell, one node here), and now and
    # then a name that is no node
    prefix = draw(st.one_of(st.shared(st.sampled_from(["n", ""]), key="prefix"), st.sampled_from(["N", "x", "nn"])))
    if kind <= 3:
        return prefix + draw(padded)
    if kind <= 7:
        inside = ",".join(draw(st.lists(ranges(), min_size=0, max_size=4)))
        suffix = draw(st.sampled_from(["", "", "", "", "x", "]", "[1]", "-"]))
        # ClusterShell reads "n[]0" as n0 and "n[1-2]0" as n10,n20: digits after brackets are refused here
        return prefix + "[" + inside + "]" + (suffix if inside else "")
    return draw(st.sampled_from(["", "[", "]", "n[", "n]1", "-", "n-1", "[[1]]", "n1 n2", "n 1"]))


@st.composite
def node_sets(draw):
    parts = draw(st.lists(elements(), min_size=1, max_size=5))
    operators = draw(
        st.lists(st.sampled_from([",", ",", ",", "!", "&", "^"]), min_size=len(parts), max_size=len(parts))
    )
    text = parts[0]
    for operator, part in zip(operators[1:], parts[1:]):
        text += draw(spaces) + operator + draw(spaces) + part
    return draw(spaces) + text + draw(spaces), parts


@given(node_sets())
def test_parses_as_clustershell(generated):
    text, parts = generated
    # a part that is no node on its own makes the whole refused here (x1!x1 is an empty set to ClusterShell)
    expected = REFUSED if any(oracle(part) == REFUSED for part in parts) else oracle(text)
    try:
        got: list[int] | str = parse(text)
    except NodeSetError:
        got = REFUSED
    assert got == expected, text


@given(st.text(alphabet=st.sampled_from("n0123456789[],-!&^/@. x\t"), max_size=60) | st.text(max_size=60))
def test_any_text_is_nodes_or_a_typed_error_quickly(text):
    started = time.perf_counter()
    try:
        result = parse(text, resolve=lambda name: [1, 2])
    except NodeSetError as exc:
        assert str(exc).startswith("node set ")
    else:
        assert result == sorted(set(result))
    assert time.perf_counter() - started < 0.5
