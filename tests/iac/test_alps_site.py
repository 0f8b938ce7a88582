"""The Alps-shaped site file stays valid and plannable at scale (correctness only: bench/ times it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from iac.plan import make_plan
from vocab.site import expand_nodes, load_site

ALPS = Path(__file__).resolve().parents[2] / "sites" / "alps.yaml"


@pytest.fixture(scope="module")
def alps():
    return load_site(ALPS)


def test_alps_loads_with_2688_gh200_nodes(alps):
    assert alps.name == "alps"
    assert alps.spec.driver == "ssh"
    assert len(alps.nodes) == 2688
    hw = {(n.hardware.gpus.model, n.hardware.gpus.count, n.hardware.gpus.memory_gib, n.hardware.gpus.vboost,
           n.hardware.arch) for n in alps.nodes.values()}
    assert hw == {("gh200", 4, 96, True, "aarch64")}


def test_alps_has_the_three_platforms_and_a_free_pool(alps):
    platforms = {p: set(plat.vclusters) for p, plat in alps.spec.platforms.items()}
    assert {"ml", "hpc", "climate"} <= set(platforms)
    assert {"clariden", "bristen"} <= platforms["ml"]
    assert all(len(v) >= 2 for v in platforms.values())
    sizes = Counter(alps.desired.values())
    assert sizes[None] > 0  # the free pool
    assert max(sizes, key=lambda v: sizes[v] if v else -1) == "clariden"  # the big one


def test_every_alps_node_is_in_at_most_one_vcluster(alps):
    seen: dict[str, str] = {}
    for name, vc in alps.vclusters.items():
        for node in expand_nodes(vc.nodes):
            assert node not in seen, f"{node} in {seen.get(node)} and {name}"
            seen[node] = name
    assert set(seen) <= set(alps.nodes)
    assert {n: v for n, v in alps.desired.items() if v} == seen


def test_alps_partitions_span_their_vcluster_members(alps):
    for name, vc in alps.vclusters.items():
        members = set(alps.members(name))
        for p in vc.partitions:
            assert p.nodes is None or set(expand_nodes(p.nodes)) <= members, (name, p.name)


def test_moving_256_alps_nodes_plans_256_moves(alps):
    desired = dict(alps.desired)
    moved = alps.members("clariden")[-256:]
    desired.update(dict.fromkeys(moved, "daint"))
    plan = make_plan(alps, alps.desired, set(), desired)
    assert [m.node for m in plan.moves] == moved
    assert {(m.source, m.target) for m in plan.moves} == {("clariden", "daint")}
    assert not plan.finish and not plan.problems
