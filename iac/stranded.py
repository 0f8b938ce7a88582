"""Pending jobs a move would strand (pure): what must happen before nodes may leave their vCluster.

Slurm 22.05 ends a pending job with NODE_FAIL when the controller restarts without a node the job named
with `-w` (it logs `Invalid req_nodes`), and a job that asks for more nodes than its partition keeps pends
for ever. Both are checked before the source's slurm.conf loses the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.slurm.control import PendingJob


@dataclass(frozen=True)
class Stranded:
    """One pending job and why the move would strand it."""

    job: PendingJob
    node: str  # the leaving node it is held by
    why: str
    requires: bool  # it named the node with -w (Slurm would end it), rather than needing a node count

    def describe(self) -> str:
        return f"job {self.job.id} ({self.job.user}) {self.why}"


def stranded_jobs(pending: list[PendingJob], partitions: dict[str, list[str]], leaving: list[str]) -> list[Stranded]:
    """The pending jobs that could no longer run if `leaving` left, each tied to one leaving node.

    A node is tied to a job that names it with -w; for a job that needs a node count, the leaving nodes of
    its partition are tied one by one, in order, until the nodes that stay are enough again, so the other
    leaving nodes still move. A job that cannot run even now (it asks for more than its partition has) is
    not this move's doing and is left alone.
    """
    out: list[Stranded] = []
    held: set[str] = set()
    going = set(leaving)
    for job in pending:
        for n in job.required:
            if n in going:
                out.append(Stranded(job, n, f"requires {n} (-w)", requires=True))
                held.add(n)
    for job in pending:
        if job.required or not job.partitions:
            continue  # a job naming its nodes runs there or nowhere: settled above
        parts = [p for p in job.partitions if p in partitions]
        if not parts or not any(len(partitions[p]) >= job.nodes for p in parts):
            continue

        def staying(p: str) -> list[str]:
            return [n for n in partitions[p] if n not in going or n in held]

        if any(len(staying(p)) >= job.nodes for p in parts):
            continue
        p = next(p for p in parts if len(partitions[p]) >= job.nodes)
        for n in [n for n in leaving if n in partitions[p] and n not in held]:
            if len(staying(p)) >= job.nodes:
                break
            held.add(n)
            out.append(Stranded(job, n, f"needs {job.nodes} nodes in partition {p}", requires=False))
    return out
