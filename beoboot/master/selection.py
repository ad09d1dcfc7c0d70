"""Which nodes a node set names on this master: beoserv resolves `@up`, `@all`, the other states and the
config's `[groups]` (beoboot.master.nodeset parses; this knows what the names mean). The commands send
their node-set text to beoserv as typed, so a group is declared once, in beoserv's config, and a state is
the registry's as of the request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from agent.protocol import NodeState
from beoboot.errors import BeobootError
from beoboot.master import nodeset
from beoboot.master.registry import Registry

ALL_NODES = "all"  # @all: every node the registry knows, whatever its state
# names a [groups] entry may not take: they are the master's own
RESERVED = frozenset({ALL_NODES, *(state.value for state in NodeState)})


class SelectionError(BeobootError):
    """A node set (or its -x) that names no nodes of this master, or is not a node set."""

    exit_code = 2


def resolver(
    registry: Registry, groups: Mapping[str, Collection[int]], linked: Collection[int] | None = None
) -> nodeset.Resolver:
    """@all, @up, @booting, @down from the registry, then the config's groups. With `linked` (the nodes
    whose job link is open), @up is the nodes a job can start on: up in the registry and linked."""

    def resolve(name: str) -> Collection[int]:
        if name == ALL_NODES:
            return [node.number for node in registry.nodes()]
        if name in {state.value for state in NodeState}:
            numbers = registry.numbers_in_state(NodeState(name))
            if name == NodeState.UP and linked is not None:
                numbers = {number for number in numbers if number in linked}
            return numbers
        if name in groups:
            return groups[name]
        known = sorted(RESERVED) + sorted(groups)
        raise LookupError("groups are @" + ", @".join(known) + "; add one under [groups] in beoserv's config")

    return resolve


def select(text: str, exclude: str, resolve: nodeset.Resolver, prefix: str = "n") -> list[int]:
    """The nodes of `text` less those of `exclude` (-x), sorted; SelectionError naming the bad one."""
    try:
        wanted = nodeset.parse(text, resolve, prefix)
        if exclude:
            excluded = set(nodeset.parse(exclude, resolve, prefix))
            wanted = [number for number in wanted if number not in excluded]
    except nodeset.NodeSetError as exc:
        raise SelectionError(str(exc), hint=exc.hint) from None
    return wanted


def check_group_name(name: str) -> str:
    """A [groups] key: a group name that is not one of the master's own (@up, @all, ...)."""
    if not nodeset.GROUP_NAME.fullmatch(name):
        raise ValueError("is not a group name (letters, digits, '_', '.', '-')")
    if name in RESERVED:
        raise ValueError("is the master's own (@" + ", @".join(sorted(RESERVED)) + "): choose another name")
    return name
