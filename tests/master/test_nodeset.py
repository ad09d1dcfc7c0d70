"""Node sets: beoboot.master.nodeset parses as ClusterShell's NodeSet does (tests/master/nodeset_oracle.py),
keeps bpsh's old forms, and refuses the rest with a NodeSetError in bounded time."""

from __future__ import annotations

import time

import pytest
from nodeset_oracle import REFUSED, oracle

from beoboot.master import nodeset
from beoboot.master.nodeset import NodeSetError, fold, parse

# the same text to both parsers
SHARED = [
    "n3",
    "n[0-99,120]",
    "n[1-3],n[2-5]",  # overlapping
    "n[1-5],n[3]",
    " n1 , n2 ",  # whitespace around parts
    "\tn1\t",
    "n[ 1 - 3 ]",  # and inside brackets
    "n[1 ,2]",
    "n[00-10]",  # padded: nodes 0..10
    "n05",  # node 5
    "n[009-011]",
    "n[01-03,005]",
    "n[000-000]",
    "n05,n5",  # the same node twice
    "n[01-100]",  # padded differently: refused, as ClusterShell does
    "n[8-010]",
    "n[5-3]",  # reversed
    "n[10-9]",
    "n1,,n2",  # empty parts
    "n[1-2],",
    ",n1",
    "n[]",
    "n[1,,2]",
    "n[[1-2]]",  # nested brackets
    "n[1-2][3]",
    "n[1-2]c[3-4]",  # two dimensions: names that are no node here
    "n[1-3",
    "n1]",
    "n[1-3]]",
    "n",
    "n 1",
    "n1 n2",
    "N1",
    "nn1",
    "n-1",
    "n[-1]",
    "n[1-]",
    "n[a-b]",
    "n[1-3]x",
    "n[1-3]-x",
    "n[1-10/3]",  # steps
    "n[0-4/2,1]",
    "n[1-9/02]",
    "n[1-3/4]",
    "n[1-3/0]",
    "n[2-6/-1]",
    "n[1-5]!n3,n4",  # operators, left to right
    "n[1-5]!n[2-3]&n[1-4]",
    "n[1-5]^n[4-8]",
    "n[1-3]!n2!n3",
    "n[1-5/2]!n[1-5/4]",
    "n1 ! n2",
    "n1!",
    "!n1",
    "n[1-3],!n2",
    "n[1-3]!!n2",
    "n[1-3]&",
    "[0-3]",  # bare numbers in brackets: the nodes 0..3
    "[01-02]",
    "n[1-3],[4]",
    "",  # ClusterShell's empty set: no node named, refused here
]

# beoboot's own spellings (bpsh's old forms and Scyld's), beside the ClusterShell text naming the same nodes
SHORTHANDS = [
    ("0", "n0"),
    ("0,3", "n[0,3]"),
    ("2-4", "n[2-4]"),
    ("0-99", "n[0-99]"),
    ("n2-4", "n[2-4]"),
    (".3", "n3"),
    (".2-4,7", "n[2-4,7]"),
    ("3,n5,.7", "n[3,5,7]"),
]

# accepted by ClusterShell, refused here: digits after brackets ("n[1-2]0" is n10,n20 to ClusterShell, "n[]0"
# is n0), and numbers Python's int() reads that no one types
DIVERGENT = ["n[1-2]0", "n[]0", "n[+1]", "n[1_0]", "n١", "n[١]"]

# one node spelled two ways: ClusterShell's n0 and n00 are two hosts, beoboot's both node 0
SPELLED_TWICE = [("n0!n00", [], [0]), ("n[0-3]!n[00-01]", [2, 3], [0, 1, 2, 3]), ("n05&n5", [5], [])]

GROUPS = {"up": [0, 1, 2], "all": [0, 1, 2, 3, 4], "rack1": [0, 1], "gpu": [4]}


@pytest.mark.parametrize("text", SHARED)
def test_parses_as_clustershell(text):
    expected = oracle(text)
    if expected == REFUSED:
        with pytest.raises(NodeSetError):
            parse(text)
    else:
        assert parse(text) == expected


@pytest.mark.parametrize("ours, theirs", SHORTHANDS)
def test_shorthands_name_what_the_clustershell_spelling_does(ours, theirs):
    assert parse(ours) == oracle(theirs) != REFUSED


@pytest.mark.parametrize("text", DIVERGENT)
def test_digits_python_reads_and_no_one_types_are_refused(text):
    assert oracle(text) != REFUSED
    with pytest.raises(NodeSetError):
        parse(text)


@pytest.mark.parametrize("text, ours, theirs", SPELLED_TWICE)
def test_padding_names_the_node_not_another_host(text, ours, theirs):
    assert (parse(text), oracle(text)) == (ours, theirs)


@pytest.mark.parametrize(
    "text, expected", [("0", [0]), ("0,3", [0, 3]), ("2-4", [2, 3, 4]), (".1,n2", [1, 2]), ("1,1", [1]), (".3", [3])]
)
def test_bpsh_old_forms_keep_working(text, expected):
    assert parse(text) == expected


def test_groups_and_states_resolve_through_the_caller():
    resolve = GROUPS.__getitem__
    assert parse("@up", resolve) == [0, 1, 2]
    assert parse("@all", resolve) == [0, 1, 2, 3, 4]
    assert parse("all", resolve) == [0, 1, 2]  # bpsh's old `all`: every node that is up
    assert parse("@all!@rack1", resolve) == [2, 3, 4]
    assert parse("@rack1,@gpu,n3", resolve) == [0, 1, 3, 4]
    assert parse("@up&n[1-9]", resolve) == [1, 2]


def test_an_unknown_group_is_named_with_the_known_ones():
    def resolve(name):
        if name not in GROUPS:
            raise LookupError("groups are @" + ", @".join(GROUPS))
        return GROUPS[name]

    with pytest.raises(NodeSetError, match=r"'@rack9' in 'n1,@rack9': no group @rack9 \(groups are @up, @all"):
        parse("n1,@rack9", resolve)


def test_a_group_without_a_resolver_names_beoserv():
    with pytest.raises(NodeSetError, match="beoserv's to resolve"):
        parse("@up")


def test_the_error_names_the_bad_part_and_the_syntax():
    with pytest.raises(NodeSetError) as caught:
        parse("n[0-3],n[7-5],n9")
    assert "'n[7-5]'" in str(caught.value) and "backwards" in str(caught.value)
    assert "n[0-99,120]" in caught.value.hint


def test_the_hostname_prefix_is_the_callers():
    assert parse("node[1-3],node7", prefix="node") == [1, 2, 3, 7]
    with pytest.raises(NodeSetError):
        parse("n3", prefix="node")


@pytest.mark.parametrize(
    "text",
    [
        "n[0-999999999]",  # one huge range
        "0-999999999",
        "n[0-65535]," * 600,  # many big ones: no more than MAX_EXPANSION expanded in all
        "n[0-99999999999999999999]",  # a number beyond any node
        "n" + "9" * 5000,
        "[" * 5000,
        "n1," * 5000,  # longer than MAX_TEXT
    ],
)
def test_huge_sets_fail_fast(text):
    started = time.perf_counter()
    with pytest.raises(NodeSetError):
        parse(text)
    assert time.perf_counter() - started < 0.5


def test_the_largest_set_allowed_parses():
    assert len(parse(f"n[0-{nodeset.MAX_NODES - 1}]")) == nodeset.MAX_NODES


@pytest.mark.parametrize(
    "numbers, text", [([3], "n3"), ([0, 1, 2, 5], "n[0-2,5]"), ([1, 3], "n[1,3]"), ([], ""), ([7, 8], "n[7-8]")]
)
def test_fold_writes_sets_as_clustershell_prints_them(numbers, text):
    assert fold(numbers) == text
    if numbers:
        node_set = __import__("nodeset_oracle").oracle_class()
        assert str(node_set.fromlist([f"n{n}" for n in numbers])) == text
