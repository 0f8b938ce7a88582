"""Properties of the plan and of hostlists, for any site edit (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iac.plan import make_plan
from vocab.site import collect_nodes, expand_nodes, parse_site

VCLUSTERS = ("clariden", "bristen", "eiger")
owner = st.sampled_from((None, *VCLUSTERS))


def site_with(owners: dict[str, str | None]):
    """A site file (as parsed YAML) putting each node where `owners` says."""
    members = {v: collect_nodes([n for n, o in owners.items() if o == v]) for v in VCLUSTERS}
    return parse_site({
        "site": "prop",
        "nodes": [{"names": collect_nodes(list(owners)), "hardware": {"cpus": 8, "memory_gib": 16}}],
        "platforms": {"ml": {"vclusters": {v: {"nodes": members[v]} for v in VCLUSTERS[:2]}},
                      "hpc": {"vclusters": {"eiger": {"nodes": members["eiger"]}}}},
    }, "prop.yaml")


def applied(observed: dict, plan) -> dict:
    out = dict(observed)
    for m in plan.moves:
        assert out[m.node] == m.source  # a move starts where the node is
        out[m.node] = m.target
    return out


sites = st.integers(1, 24).flatmap(lambda n: st.tuples(
    st.lists(owner, min_size=n, max_size=n), st.lists(owner, min_size=n, max_size=n)))


@settings(max_examples=100, deadline=None)
@given(sites)
def test_plan_moves_exactly_the_nodes_whose_owner_changed(owners):
    before, after = owners
    names = [f"nid{i + 1:03d}" for i in range(len(before))]
    observed = dict(zip(names, before))
    site = site_with(dict(zip(names, after)))
    plan = make_plan(site, observed, set())
    assert {m.node for m in plan.moves} == {n for n in names if observed[n] != site.desired[n]}
    assert all(m.target == site.desired[m.node] for m in plan.moves)
    assert [m.node for m in plan.moves] == sorted(m.node for m in plan.moves)  # site order, stable output
    assert not plan.finish and not plan.problems


@settings(max_examples=100, deadline=None)
@given(sites)
def test_applying_a_plan_twice_changes_nothing(owners):
    before, after = owners
    names = [f"nid{i + 1:03d}" for i in range(len(before))]
    site = site_with(dict(zip(names, after)))
    once = applied(dict(zip(names, before)), make_plan(site, dict(zip(names, before)), set()))
    assert once == site.desired
    again = make_plan(site, once, set())
    assert again.empty and applied(once, again) == once


@settings(max_examples=200, deadline=None)
@given(st.sets(st.tuples(st.sampled_from(("nid", "gpu-", "x")), st.integers(0, 2000)), max_size=60))
def test_hostlists_round_trip(parts):
    names = {f"{p}{i:03d}" for p, i in parts}
    expr = collect_nodes(names)
    expanded = expand_nodes(expr)
    assert sorted(expanded) == sorted(names) and len(expanded) == len(set(expanded))
    assert collect_nodes(expanded) == expr  # compressing is stable
