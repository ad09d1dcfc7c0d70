"""ClusterShell's NodeSet (Debian's python3-clustershell) as the oracle for beoboot.master.nodeset.

Imported from Debian's dist-packages (appended to sys.path, after the venv, so it shadows nothing). The
oracle's answer is put in beoboot's terms: a set whose every name is `nN` (or a bare `N`) is those node
numbers (`n05` is node 5: beoboot's rule for padded names); a set holding any other name (`n1x`, `n-1`)
names hosts that are no node here, so beoboot must refuse it; an error must be an error here too.
"""

from __future__ import annotations

import re
import sys

import pytest

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
NODE_NAME = re.compile(r"n?([0-9]+)")
REFUSED = "refused"


def oracle_class():
    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    try:
        from ClusterShell.NodeSet import NodeSet
    except ImportError:
        pytest.skip("python3-clustershell is not installed (apt-get install python3-clustershell)")
    return NodeSet


def oracle(text: str) -> list[int] | str:
    """The node numbers ClusterShell's NodeSet gives for `text`, or REFUSED."""
    node_set = oracle_class()
    try:
        names = list(node_set(text))
    except Exception:  # NodeSetParseError, NodeSetParseRangeError and what else it raises on odd input
        return REFUSED
    numbers = []
    for name in names:
        found = NODE_NAME.fullmatch(name)
        if not found or not name.isascii():
            return REFUSED
        numbers.append(int(found[1]))
    if not text.strip():
        return REFUSED  # no node named at all: refused here, where ClusterShell gives the empty set
    return sorted(set(numbers))  # n0!n0: a set that is empty, which its user is told of (bpsh: no node)
