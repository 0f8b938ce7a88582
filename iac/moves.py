"""Moving nodes between vClusters: named, journaled, idempotent steps run in order, batched per step.

    drain ▸ wait ▸ pending ▸ detach ▸ reboot ▸ admit ▸ resume

Each step checks what is already true before acting, so re-running after a crash (SIGKILL at any point)
finishes the move. A step that fails for a node stops that node's move where it is safe: a node whose jobs
do not end in time stays drained in its source vCluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from iac.journal import Journal
from vocab.layout import Layout
from iac.plan import Move, Plan
from iac.plane import Plane
from vocab.site import Site, collect_nodes
from iac.stranded import stranded_jobs
from services.slurm.control import NodeState
from vocab.names import MOVING, move_reason, owner_key

@dataclass
class Outcome:
    """What happened to one node in this apply."""

    node: str
    source: str | None
    target: str | None
    result: str = "pending"  # moved | finished | timeout | held | failed
    detail: str = ""
    notes: list[str] = field(default_factory=list)  # what --force did to jobs on the way

    @property
    def report(self) -> str:
        return "; ".join([self.detail] * bool(self.detail) + self.notes)

    @property
    def ok(self) -> bool:
        return self.result in ("moved", "finished")


@dataclass
class MoveRunner:
    site: Site
    layout: Layout
    planes: dict[str, Plane]
    journal: Journal
    nodes: object  # the driver's node operations (iac/drivers/nodes.py)
    timeout: float = 600.0
    force: bool = False
    say: Callable[[str], None] = print
    poll: float = 0.05
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    # ---- the runner ----
    def run(self, plan: Plan) -> list[Outcome]:
        for m in plan.moves:
            self.outcomes[m.node] = Outcome(m.node, m.source, m.target)
            self.journal.record("move", "start", m.node, source=owner_key(m.source), target=owner_key(m.target))
        for n in plan.finish:
            owner = self._owner(n)
            self.outcomes[n] = Outcome(n, owner, owner)
        moves = list(plan.moves)
        self.drain([m for m in moves if m.source])
        self.wait([m for m in moves if m.source and self._live(m)])
        self.pending([m for m in moves if m.source and self._live(m)])
        self.detach([m for m in moves if m.source and self._live(m)])
        self.reboot([m for m in moves if self._live(m)])
        self.admit([m for m in moves if m.target and self._live(m)])
        self.resume([m for m in moves if m.target and self._live(m)] + [Move(n, self._owner(n), self._owner(n)) for n in plan.finish])
        for m in moves:
            o = self.outcomes[m.node]
            if o.result == "pending":
                o.result = "moved"
            if o.ok:
                self.journal.record("move", "done", m.node, target=owner_key(m.target))
        for n in plan.finish:
            o = self.outcomes[n]
            if o.result == "pending":
                o.result = "finished"
                # the interrupted move is over: without this record every later plan would finish it again
                self.journal.record("move", "done", n, target=owner_key(o.target))
        return list(self.outcomes.values())

    def _owner(self, node: str) -> str | None:
        return next((v for v, p in self.planes.items() if node in p.members()), None)

    def _live(self, m: Move) -> bool:
        return self.outcomes[m.node].result == "pending"

    def _stop(self, m: Move, result: str, detail: str) -> None:
        o = self.outcomes[m.node]
        o.result, o.detail = result, detail
        self.journal.record("move", "held" if result in ("timeout", "held") else result, m.node, detail=detail)
        self.say(f"[red]{result}[/] {m.node}: {detail}")

    # ---- steps ----
    def drain(self, moves: list[Move]) -> None:
        """Drain each node in its source with our reason; an admin's drain is respected."""
        for m in moves:
            state = self.planes[m.source].slurm.node(m.node)
            self.journal.record("drain", "start", m.node)
            if state and state.drain and not state.ours and state.reason:
                if not self.force:
                    self._stop(m, "held", f"drained by someone else ({state.reason!r}); not moved without --force")
                    continue
                # keep their drain as it is and restore it in the target
                self.journal.record("drain", "admin-drain-carried", m.node, reason=state.reason)
            elif not (state and state.drain and state.reason == move_reason(m.target)):
                self.planes[m.source].slurm.drain([m.node], move_reason(m.target))
            self.journal.record("drain", "done", m.node)
            self.say(f"drain   {m.node} in {m.source}")

    def wait(self, moves: list[Move]) -> None:
        """Wait until each node has no running job (--force: requeue them first)."""
        if not moves:
            return
        for m in moves:
            self.journal.record("wait", "start", m.node)
            if self.force:
                self._requeue(m)
        pending = {m.node: m for m in moves}
        deadline = time.monotonic() + self.timeout
        delay = self.poll
        while pending:
            for source in {m.source for m in pending.values()}:
                states = self.planes[source].slurm.nodes()
                for name in [n for n, m in pending.items() if m.source == source]:
                    st = states.get(name)
                    if st is None or self._drained(source, st):
                        self.journal.record("wait", "done", name)
                        self.say(f"drained {name} in {source}")
                        del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                for m in pending.values():
                    jobs = self.planes[m.source].slurm.jobs_on(m.node)
                    self.journal.record("wait", "timeout", m.node, jobs=jobs)
                    self._stop(m, "timeout", f"jobs {', '.join(jobs) or '?'} still running after {self.timeout:.0f}s; "
                               f"left drained in {m.source} (re-run apply to continue, or --force to requeue)")
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def _drained(self, source: str, st: NodeState) -> bool:
        return st.drained and not self.planes[source].slurm.jobs_on(st.name)

    def _requeue(self, m: Move) -> None:
        slurm = self.planes[m.source].slurm
        for job in slurm.jobs_on(m.node):
            if slurm.requeue(job):
                self.journal.record("wait", "requeued", m.node, job=job)
                self.say(f"requeued job {job} from {m.node}")
                self.outcomes[m.node].notes.append(f"running job {job} requeued")
            else:  # an interactive job cannot be requeued; --force ends it
                slurm.cancel(job)
                self.journal.record("wait", "cancelled", m.node, job=job)
                self.say(f"[yellow]cancelled[/] job {job} on {m.node} (not requeueable)")
                self.outcomes[m.node].notes.append(f"running job {job} cancelled (not requeueable)")

    def pending(self, moves: list[Move]) -> None:
        """Before nodes leave, the jobs pending in the source that could not run without them.

        Without --force such a node is held (left drained in its source) and the report names the jobs;
        with --force a job that names the node with -w is cancelled (the restarted controller would end it
        with NODE_FAIL), one that needs a node count stays pending, and the report says so for each.
        """
        for source in sorted({m.source for m in moves}):
            group = [m for m in moves if m.source == source]
            slurm = self.planes[source].slurm
            found = stranded_jobs(slurm.pending_jobs(), slurm.partitions(), [m.node for m in group])
            for m in group:
                jobs = [s for s in found if s.node == m.node]
                if not jobs:
                    continue
                ids = sorted({s.job.id for s in jobs}, key=int)
                if not self.force:
                    self.journal.record("pending", "held", m.node, jobs=ids)
                    self._stop(m, "held", f"pending {'; '.join(s.describe() for s in jobs)}: {'they' if len(ids) > 1 else 'it'} could not run once "
                               f"{m.node} leaves {source}; left drained in {source}. Cancel or change the job "
                               f"(scancel {' '.join(ids)}), or re-run with --force (cancels jobs that require "
                               f"{m.node}; the others stay pending)")
                    continue
                for s in jobs:
                    if s.requires:
                        slurm.cancel(s.job.id)
                        note = f"pending job {s.job.id} ({s.job.user}) cancelled: it required {m.node} (-w)"
                    else:
                        note = f"pending job {s.job.id} ({s.job.user}) stays pending: it {s.why}, " \
                               f"more than {source} keeps"
                    self.journal.record("pending", "forced", m.node, job=s.job.id, what=note)
                    self.outcomes[m.node].notes.append(note)
                    self.say(f"[yellow]{note}[/]")

    def detach(self, moves: list[Move]) -> None:
        """Remove the nodes from their source's slurm.conf, restart its controller, stop their slurmd."""
        for source in sorted({m.source for m in moves}):
            group = [m for m in moves if m.source == source]
            names = {m.node for m in group}
            plane = self.planes[source]
            for m in group:
                self.journal.record("detach", "start", m.node)
            plane.set_members([n for n in plane.members() if n not in names])
            self.nodes.stop(sorted(names))
            for m in group:
                self.journal.record("detach", "done", m.node)
            self.say(f"detach  {collect_nodes(names)} from {source}")

    def reboot(self, moves: list[Move]) -> None:
        """Boot each node into its target's image (local driver: reset the node root)."""
        for m in moves:
            self.journal.record("reboot", "start", m.node, image=self.site.image_of(m.target))
            self.nodes.reboot(m.node, m.target)
            self.journal.record("reboot", "done", m.node)
            self.say(f"reboot  {m.node} into {self.site.image_of(m.target)}")

    def admit(self, moves: list[Move]) -> None:
        """Add the nodes to their target's slurm.conf (drained), restart its controller, start slurmd.

        One playbook run configures the nodes of every target (Ansible's start-up dominates a move).
        """
        if not moves:
            return
        for target in sorted({m.target for m in moves}):
            group = [m for m in moves if m.target == target]
            plane = self.planes[target]
            for m in group:
                self.journal.record("admit", "start", m.node)
            members = set(plane.members()) | {m.node for m in group}
            plane.set_members([n for n in self.site.nodes if n in members], reload=False)
            # drained before its slurmd starts, so no job lands before resume
            plane.slurm.drain([m.node for m in group], move_reason(target))
        self.nodes.configure({m.node: m.target for m in moves}, "admit")
        for target in sorted({m.target for m in moves}):
            # the other members re-read the new slurm.conf; the admitted ones just read it
            self.planes[target].reload_slurmds(skip=frozenset(m.node for m in moves))
        for m in moves:
            self.journal.record("admit", "done", m.node)
        for target in sorted({m.target for m in moves}):
            self.say(f"admit   {collect_nodes([m.node for m in moves if m.target == target])} into {target}")

    def resume(self, moves: list[Move], register_timeout: float = 60.0) -> None:
        """Once registered, resume nodes we drained; restore an admin's drain carried by --force.

        Slurm flags a resumed node not responding until its next ping (~1 s, `idle*`): its slurmd is made
        to register again, and the step ends when the node answers, so a move hands back a node that takes
        jobs.
        """
        for target in sorted({m.target for m in moves}):
            plane = self.planes[target]
            pending = {m.node for m in moves if m.target == target}
            for n in pending:
                self.journal.record("resume", "start", n)
            resumed: set[str] = set()
            deadline = time.monotonic() + register_timeout
            while pending:
                states = plane.slurm.nodes()
                ours: list[str] = []  # resumed with one scontrol call per pass
                for n in sorted(pending):
                    st = states.get(n)
                    if st is None or not st.responding:
                        continue
                    if n in resumed:
                        pending.discard(n)
                        self.journal.record("resume", "done", n)
                        continue
                    carried = self.journal.carried_reason(n)
                    if carried:
                        plane.slurm.drain([n], carried)
                        self.say(f"kept    {n} drained in {target}: {carried!r} (set by someone else)")
                    elif st.drain and st.reason.startswith(MOVING):
                        ours.append(n)
                    resumed.add(n)
                if ours:
                    plane.slurm.resume(ours)
                    # RESUME flags the nodes NOT_RESPONDING until the controller's next ping (up to ~1 s);
                    # a SIGHUP makes their slurmds register again at once
                    plane.reload_slurmds(skip=frozenset(plane.members()) - set(ours))
                    self.say(f"resume  {collect_nodes(ours)} in {target}")
                if pending and time.monotonic() > deadline:
                    for n in pending:
                        log = self.layout.node_dir(n) / "log/slurmd.log"
                        self._stop(Move(n, None, target), "failed",
                                   f"slurmd did not register with {target} in {register_timeout:.0f}s; see {log}")
                    return
                if pending:
                    time.sleep(self.poll)
