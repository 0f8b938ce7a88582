"""Plan: what must change so that every node's observed owner equals the site file's (pure)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vocab.site import Site, collect_nodes
from vocab.names import owner_name


@dataclass(frozen=True)
class Move:
    """Move one node: source/target are vCluster names, None for the free pool."""

    node: str
    source: str | None
    target: str | None

    def describe(self) -> str:
        return f"{self.node}: {owner_name(self.source)} -> {owner_name(self.target)}"


@dataclass(frozen=True)
class Plan:
    moves: tuple[Move, ...]
    finish: tuple[str, ...]  # nodes already in place whose move's last step (resume) is pending
    problems: tuple[str, ...]  # things the plan cannot do

    @property
    def empty(self) -> bool:
        return not (self.moves or self.finish)

    def to_json(self) -> dict:
        return {
            "moves": [asdict(m) for m in self.moves],
            "finish": list(self.finish),
            "problems": list(self.problems),
        }

    def summary(self) -> list[str]:
        """Moves grouped by (source, target) as hostlists, for people."""
        groups: dict[tuple, list[str]] = {}
        for m in self.moves:
            groups.setdefault((m.source, m.target), []).append(m.node)
        return [
            f"{collect_nodes(nodes)}: {owner_name(s)} -> {owner_name(t)}" for (s, t), nodes in groups.items()
        ]


def make_plan(
    site: Site,
    observed: dict[str, str | None],
    pending_resume: set[str],
    desired: dict[str, str | None] | None = None,
) -> Plan:
    """Moves from observed to desired owners (default: the site file's), in site order.

    `observed` maps node -> vCluster (or None) as the rendered configs say; `pending_resume` are nodes in
    their vCluster still drained by one of our moves. Nodes in the state but not in the site are problems.
    """
    desired = site.desired if desired is None else desired
    moves, finish, problems = [], [], []
    for node in site.nodes:
        want = desired.get(node, observed.get(node))
        have = observed.get(node)
        if want != have:
            moves.append(Move(node, have, want))
        elif node in pending_resume:
            finish.append(node)
    for node, owner in observed.items():
        if node not in site.nodes and owner is not None:
            problems.append(
                f"{node} is in vCluster {owner} but no longer in the site file; add it back, move it to the free pool, then remove it"
            )
    return Plan(tuple(moves), tuple(finish), tuple(problems))
