"""Which pending jobs a move would strand, and which leaving nodes they hold back (pure)."""

from __future__ import annotations

from iac.stranded import stranded_jobs
from services.slurm.control import PendingJob


def job(jid: str, nodes: int = 1, parts: tuple[str, ...] = ("normal",), required: tuple[str, ...] = ()) -> PendingJob:
    return PendingJob(jid, "alice", parts, nodes, required)


PARTS = {"normal": ["n1", "n2", "n3"], "debug": ["n3"]}


def held(found) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in found:
        out.setdefault(s.node, []).append(s.job.id)
    return out


def test_job_naming_a_leaving_node_holds_it():
    found = stranded_jobs([job("7", required=("n2",))], PARTS, ["n2", "n3"])
    assert held(found) == {"n2": ["7"]} and found[0].requires and "requires n2 (-w)" in found[0].describe()


def test_job_naming_a_staying_node_holds_nothing():
    assert stranded_jobs([job("7", required=("n1",))], PARTS, ["n2", "n3"]) == []


def test_node_count_holds_only_as_many_leaving_nodes_as_it_needs():
    found = stranded_jobs([job("9", nodes=2)], PARTS, ["n2", "n3"])
    assert held(found) == {"n2": ["9"]}  # n1 + n2 stay: enough; n3 still moves
    assert not found[0].requires and "needs 2 nodes in partition normal" in found[0].why


def test_a_node_held_for_one_job_counts_for_another():
    found = stranded_jobs([job("7", required=("n2",)), job("9", nodes=2)], PARTS, ["n2", "n3"])
    assert held(found) == {"n2": ["7"]}


def test_job_that_cannot_run_even_now_is_not_the_moves_doing():
    assert stranded_jobs([job("9", nodes=5)], PARTS, ["n3"]) == []


def test_job_pending_in_several_partitions_fits_if_one_still_fits():
    assert stranded_jobs([job("9", nodes=1, parts=("debug", "normal"))], PARTS, ["n3"]) == []
    found = stranded_jobs([job("9", nodes=1, parts=("debug",))], PARTS, ["n3"])
    assert held(found) == {"n3": ["9"]}
