"""A move never ends a pending job: jobs that could not run without the leaving node hold it back."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

LATER = "--begin=now+1hour"  # pending for a reason that has nothing to do with the move


def submit(site, *opts: str) -> str:
    out = site.slurm("alpha", "sbatch", "--parsable", "-o", "/dev/null", LATER, *opts, "--wrap", "true")
    return out.strip().split(";")[0]


def test_pending_job_naming_the_node_holds_the_move_until_forced(site):
    job = submit(site, "-w", "nid002")
    site.set_owner("nid002", "beta")
    r = site.strata("apply", check=False)
    assert r.returncode == 1
    assert f"held     nid002: alpha -> beta  (pending job {job} (root) requires nid002 (-w): it could not run " \
           f"once nid002 leaves alpha; left drained in alpha" in r.stdout, r.stdout
    assert f"scancel {job}" in r.stdout and "--force" in r.stdout
    assert site.members()["alpha"] == ["nid001", "nid002"]  # not detached
    assert site.node_state("alpha", "nid002").reason == "strata: moving to beta"
    assert site.job("alpha", job)["JobState"] == "PENDING"  # not NODE_FAIL: nothing was ended

    r = site.strata("apply", "--force")
    assert f"pending job {job} (root) cancelled: it required nid002 (-w)" in r.stdout, r.stdout
    assert site.members() == {"alpha": ["nid001"], "beta": ["nid002", "nid003"], "gamma": []}
    assert site.wait_job("alpha", job, ("CANCELLED",))["JobState"] == "CANCELLED"


def test_pending_job_needing_the_node_count_holds_one_node_and_stays_pending_when_forced(site):
    job = submit(site, "-N2")
    site.set_owner("nid002", "beta")
    r = site.strata("apply", check=False)
    assert r.returncode == 1
    assert f"pending job {job} (root) needs 2 nodes in partition normal: it could not run once nid002 leaves alpha" \
        in r.stdout, r.stdout
    assert site.members()["alpha"] == ["nid001", "nid002"]

    r = site.strata("apply", "--force")
    assert f"pending job {job} (root) stays pending: it needs 2 nodes in partition normal, more than alpha keeps" \
        in r.stdout, r.stdout
    assert site.members()["alpha"] == ["nid001"]
    assert site.job("alpha", job)["JobState"] == "PENDING"


def test_pending_job_that_still_fits_does_not_hold_the_move(site):
    job = submit(site, "-N1")
    site.set_owner("nid002", "beta")
    r = site.strata("apply")
    assert "moved    nid002: alpha -> beta" in r.stdout
    assert site.job("alpha", job)["JobState"] == "PENDING"
