"""Talking to a running vCluster through Slurm's own clients (scontrol, squeue), never by editing state."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import hostlist
from vocab.names import OUR_PREFIX



class SlurmError(Exception):
    """A Slurm client command failed."""


@dataclass(frozen=True)
class NodeState:
    """A node as its controller sees it."""

    name: str
    state: str  # e.g. IDLE+DRAIN, MIXED, DOWN+NOT_RESPONDING
    reason: str  # without Slurm's "[user@time]" suffix

    @property
    def base(self) -> str:
        return self.state.split("+")[0].rstrip("*")

    @property
    def flags(self) -> set[str]:
        return set(self.state.split("+")[1:])

    @property
    def drain(self) -> bool:
        return "DRAIN" in self.flags

    @property
    def ours(self) -> bool:
        """Drained by strata (our reason prefix)."""
        return self.reason.startswith(OUR_PREFIX)

    @property
    def busy(self) -> bool:
        """Jobs still hold (or are completing on) the node."""
        return self.base in ("ALLOCATED", "MIXED", "COMPLETING") or "COMPLETING" in self.flags

    @property
    def drained(self) -> bool:
        """Drained and empty: safe to detach."""
        return self.drain and not self.busy

    @property
    def responding(self) -> bool:
        return "NOT_RESPONDING" not in self.flags and self.base not in ("DOWN", "UNKNOWN", "FUTURE")

    @property
    def short(self) -> str:
        """sinfo-like state: idle, alloc, mix, drng, drain, down."""
        if self.drain:
            return "draining" if self.busy else "drained"
        return {"ALLOCATED": "alloc", "MIXED": "mix"}.get(self.base, self.base.lower()) + (
            "*" if "NOT_RESPONDING" in self.flags else ""
        )


_FIELD = re.compile(r"(\w+)=")


def parse_node_line(line: str) -> NodeState:
    """Parse one `scontrol show node -o` line (Reason may hold spaces, so split on known keys)."""
    keys = [(m.group(1), m.start(), m.end()) for m in _FIELD.finditer(line)]
    fields: dict[str, str] = {}
    for i, (k, _, end) in enumerate(keys):
        stop = keys[i + 1][1] if i + 1 < len(keys) else len(line)
        fields.setdefault(k, line[end:stop].strip())
    reason = re.sub(r"\s*\[[^\]]*@[^\]]*\]\s*$", "", fields.get("Reason", "")).strip()
    return NodeState(fields["NodeName"], fields.get("State", "UNKNOWN"), reason)


@dataclass(frozen=True)
class PendingJob:
    """A job waiting to start, as far as a move must know: where it may run and how many nodes it needs."""

    id: str
    user: str
    partitions: tuple[str, ...]
    nodes: int  # the minimum node count it asked for
    required: tuple[str, ...]  # nodes named with -w/--nodelist


def _hosts(expr: str) -> list[str]:
    expr = expr.strip()
    return [] if expr in ("", "(null)") else hostlist.expand_hostlist(expr)


class SlurmClient:
    """Slurm clients pointed at one vCluster through SLURM_CONF."""

    def __init__(self, conf: Path, env: dict[str, str] | None = None):
        self.conf = conf
        self.env = {**(os.environ if env is None else env), "SLURM_CONF": str(conf)}

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "SlurmClient":
        """The cluster that `env` points at (a prolog's environment: Slurm sets SLURM_CONF)."""
        return cls(Path(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf"), env)

    def run(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise SlurmError(f"`{' '.join(args)}` failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def nodes(self) -> dict[str, NodeState]:
        out = self.run("scontrol", "show", "node", "-o", "--future")
        states = [parse_node_line(line) for line in out.splitlines() if line.startswith("NodeName=")]
        return {s.name: s for s in states}

    def node(self, name: str) -> NodeState | None:
        r = self.run("scontrol", "show", "node", "-o", name, check=False)
        line = next((ln for ln in r.splitlines() if ln.startswith("NodeName=")), None)
        return parse_node_line(line) if line else None

    def drain(self, nodes: list[str], reason: str) -> None:
        self.run("scontrol", "update", f"NodeName={','.join(nodes)}", "State=DRAIN", f"Reason={reason}")

    def resume(self, nodes: list[str]) -> None:
        self.run("scontrol", "update", f"NodeName={','.join(nodes)}", "State=RESUME")

    def jobs_on(self, node: str) -> list[str]:
        """Ids of jobs running or completing on node."""
        out = self.run("squeue", "-h", "-w", node, "-t", "RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "-o", "%i")
        return [j for j in out.split() if j]

    def submit(self, script: str) -> str:
        """sbatch a batch script (its #SBATCH lines say the rest); the job id."""
        r = subprocess.run(["sbatch", "--parsable"], input=script, env=self.env, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise SlurmError(f"sbatch failed: {(r.stderr or r.stdout).strip()}")
        return r.stdout.strip().split(";")[0]

    def job(self, job: str) -> dict[str, str]:
        """`scontrol show job` of one job as key -> value ({} once Slurm has forgotten it)."""
        out = self.run("scontrol", "show", "job", "-o", job, check=False)
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def pending_jobs(self) -> list[PendingJob]:
        """Jobs pending in the vCluster (squeue lists a job pending in several partitions once per partition)."""
        out = self.run("squeue", "-h", "-t", "PENDING", "-o", "%i|%u|%P|%D|%n")
        jobs: dict[str, PendingJob] = {}
        for line in out.splitlines():
            jid, user, parts, count, req = (line.split("|") + [""] * 5)[:5]
            if not jid.strip():
                continue
            prev = jobs.get(jid)
            partitions = tuple(dict.fromkeys((prev.partitions if prev else ()) + tuple(p for p in parts.split(",") if p)))
            jobs[jid] = PendingJob(jid, user, partitions, int(count or 1), tuple(_hosts(req)))
        return list(jobs.values())

    def partitions(self) -> dict[str, list[str]]:
        """Partition name -> the nodes it spans."""
        out = self.run("scontrol", "show", "partition", "-o")
        parts = {}
        for line in out.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "PartitionName" in fields:
                parts[fields["PartitionName"]] = _hosts(fields.get("Nodes", ""))
        return parts

    def requeue(self, job: str) -> bool:
        """Requeue a job; False if Slurm refuses (e.g. an interactive srun)."""
        r = subprocess.run(["scontrol", "requeue", job], env=self.env, capture_output=True, text=True)
        return r.returncode == 0

    def cancel(self, job: str) -> None:
        self.run("scancel", job, check=False)

    def reconfigure(self) -> None:
        self.run("scontrol", "reconfigure")

    def ping(self) -> bool:
        return subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True).returncode == 0
