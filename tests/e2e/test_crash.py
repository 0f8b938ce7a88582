"""SIGKILL `strata apply` at every journaled step: no node is ever in two vClusters, a re-run finishes.

One apply moves two nodes at once (alpha -> beta, and beta -> free pool) and the next moves them back, so
every step is killed both for a node entering a vCluster and for one leaving to the free pool.
"""

from __future__ import annotations

import json
import signal

import pytest

pytestmark = pytest.mark.e2e

KILL_POINTS = [
    "move:start", "drain:start", "drain:done", "wait:done", "detach:start", "detach:done",
    "reboot:start", "reboot:done:2", "admit:start", "admit:done", "resume:start", "resume:done", "move:done",
]


def assert_one_owner_each(site) -> None:
    """Each node is listed in at most one slurm.conf; status agrees (listed nowhere = free pool)."""
    members = site.members()
    seen: dict[str, str] = {}
    for v, nodes in members.items():
        for n in nodes:
            assert n not in seen, f"{n} is in the slurm.conf of both {seen[n]} and {v}"
            seen[n] = v
    st = site.status()
    owners = {n["node"]: v["vcluster"] for p in st["platforms"] for v in p["vclusters"] for n in v["nodes"]}
    free = {n["node"] for n in st["free_pool"]}
    assert owners == seen and free == {"nid001", "nid002", "nid003", "nid004"} - set(seen)


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_apply_killed_at_step_is_finished_by_rerun(shared_site, kill_at):
    site = shared_site
    there = site.members()["beta"] == ["nid002"]  # toggle: each case moves the nodes the other way
    if there:
        site.set_owner("nid002", "alpha")
        site.set_owner("nid003", "beta")
    else:
        site.set_owner("nid002", "beta")
        site.set_owner("nid003", None)
    r = site.strata("apply", check=False, STRATA_KILL_AT=kill_at)
    assert r.returncode == -signal.SIGKILL, f"apply was not killed at {kill_at}:\n{r.stdout}\n{r.stderr}"
    assert_one_owner_each(site)
    site.strata("apply")
    assert_one_owner_each(site)
    want = {"alpha": ["nid001"], "beta": ["nid002"], "gamma": []} if not there else \
        {"alpha": ["nid001", "nid002"], "beta": ["nid003"], "gamma": []}
    assert site.members() == want
    for v, nodes in want.items():
        assert site.sinfo(v) == {n: "idle" for n in nodes}, f"after re-run at {kill_at}"
    # nothing left to do, also no interrupted move to "finish" again at every later call
    assert json.loads(site.strata("plan", "--json").stdout) == {"moves": [], "finish": [], "problems": []}
    assert site.strata("plan").stdout.strip() == "no changes: every node is where the site file puts it"
    again = site.strata("apply")
    assert again.stdout.strip() == "nothing to do: every node is where the site file puts it"
    up = site.strata("up")
    assert "differs" not in up.stdout, up.stdout
