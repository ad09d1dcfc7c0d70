"""bpsh -b (beoboot.master.bpsh.folded) prints what `clush -b` prints for the same outputs and exit codes:
clush runs here with a fake ssh that gives each host its output and exit code, and its standard output is
compared byte for byte with the folded output; and, by Hypothesis, the groups are those ClusterShell's MsgTree
makes of the same lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from beoboot.master.bpsh.folded import FoldedOutput

OUT, ERR = 1, 2
FAKE_SSH = """#!/bin/sh
# clush runs: ssh [options] HOST COMMAND. The host is the last argument but one
for argument; do host=$previous; previous=$argument; done
cat "$FAKE_DIR/$host.out"
exit "$(cat "$FAKE_DIR/$host.rc")"
"""
CASES = {
    "all the same": {n: (b"same\n", 0) for n in range(4)},
    "two outputs, a last line without its newline": {
        0: (b"a\nb\n", 0),
        1: (b"a\nb", 0),
        2: (b"c\n", 0),
        3: (b"c\n", 0),
    },
    "same output, another exit code": {0: (b"x\n", 0), 1: (b"x\n", 3), 2: (b"x\n", 0), 3: (b"y\n", 1)},
    "no output from some": {0: (b"", 0), 1: (b"z\n", 0), 2: (b"", 2), 3: (b"z\n", 0)},
    "blank lines and binary": {0: (b"\n\n", 0), 1: (b"\x00\xff\n", 0), 2: (b"\n\n", 0), 3: (b"\x00\xff\n", 0)},
    # equal groups come by their first node's name, as clush orders them: n10 before n2
    "twelve nodes": {n: (b"even\n" if n % 2 else b"odd\n", 0) for n in range(12)},
}


def folded(outputs: dict[int, tuple[bytes, int]], chunk: int = 3) -> bytes:
    fold = FoldedOutput()
    written = []
    for node, (data, _) in outputs.items():  # in pieces, as a node's output arrives
        for start in range(0, len(data), chunk):
            written += fold.output(node, data[start : start + chunk], lambda n, d: b"never")
    for node, (_, status) in outputs.items():
        fold.ended(node, status)
    written += fold.render()
    assert all(stream == OUT for stream, _ in written)
    return b"".join(data for _, data in written)


def clush(outputs: dict[int, tuple[bytes, int]], tmp_path) -> bytes:
    if shutil.which("clush") is None:
        pytest.skip("clush is not installed (apt-get install clustershell)")
    fake = tmp_path / "ssh"
    fake.write_text(FAKE_SSH)
    fake.chmod(0o755)
    for node, (data, status) in outputs.items():
        (tmp_path / f"n{node}.out").write_bytes(data)
        (tmp_path / f"n{node}.rc").write_text(str(status))
    nodes = ",".join(f"n{node}" for node in outputs)
    result = subprocess.run(
        ["clush", "-S", "-b", "-f", "64", "-O", f"ssh_path={fake}", "-w", nodes, "true"],
        capture_output=True,
        env={**os.environ, "FAKE_DIR": str(tmp_path)},
        timeout=60,
    )
    return result.stdout


@pytest.mark.parametrize("case", CASES)
def test_folds_as_clush_does(case, tmp_path):
    assert folded(CASES[case]) == clush(CASES[case], tmp_path)


def test_a_node_with_twins_holds_its_output_once():
    fold = FoldedOutput()
    for node in range(100):
        fold.output(node, b"x" * 999 + b"\n", lambda n, d: d)
        fold.ended(node, 0)
    assert fold.held == 1000


def test_past_the_limit_it_stops_folding_and_holds_nothing_more():
    fold = FoldedOutput(limit=10)
    assert fold.output(0, b"abc\n", lambda n, d: d) == []
    fold.ended(0, 0)
    said = fold.output(1, b"0123456789\n", lambda n, d: b"%d: " % n + d)
    assert said[0][0] == ERR and b"not folded" in said[0][1]
    assert said[1:] == [(OUT, b"---------------\nn0\n---------------\nabc\n"), (OUT, b"1: 0123456789\n")]
    assert fold.output(2, b"more\n", lambda n, d: b"%d: " % n + d) == [(OUT, b"2: more\n")]
    fold.ended(2, 0)
    assert fold.render() == [] and fold.held == 0


def clustershell_groups(outputs: dict[int, tuple[bytes, int]]) -> set[tuple[int, frozenset[int], bytes]]:
    """The groups clush -b prints, from ClusterShell's own MsgTree: per exit code, the nodes whose lines are
    the same (clush's worker hands MsgTree each line without its newline; a node with none is in no group)."""
    from nodeset_oracle import DIST_PACKAGES

    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    msgtree = pytest.importorskip("ClusterShell.MsgTree")
    groups = set()
    for status in {status for _, status in outputs.values()}:
        tree = msgtree.MsgTree()
        for node, (data, rc) in outputs.items():
            if rc == status and data:
                for line in (data[:-1] if data.endswith(b"\n") else data).split(b"\n"):
                    tree.add(f"n{node}", line)  # host names, as clush's keys are
        for message, names in tree.walk():
            groups.add((status, frozenset(int(name[1:]) for name in names), bytes(message) + b"\n"))
    return groups


def our_groups(outputs: dict[int, tuple[bytes, int]]) -> set[tuple[int, frozenset[int], bytes]]:
    fold = FoldedOutput()
    for node, (data, status) in outputs.items():
        fold.output(node, data, lambda n, d: b"never")
        fold.ended(node, status)
    return {(status, frozenset(nodes), data) for status, nodes, data in fold.groups()}


outputs = st.dictionaries(
    st.integers(0, 40),
    st.tuples(st.sampled_from([b"", b"a\n", b"a", b"b\n", b"a\nb\n", b"\n", b"a\n\n", b"\xff\x00"]), st.integers(0, 3)),
    min_size=1,
    max_size=12,
)


@given(outputs)
def test_groups_as_clustershells_msgtree(outputs):
    assert our_groups(outputs) == clustershell_groups(outputs)
