"""What `strata train` refuses before it submits: a job Slurm can never start would pend forever.

Slurm queues a job asking for more nodes than its partition has (reason `PartitionNodeLimit` or
`Resources`) instead of rejecting it, so the node counts are checked here, against what the vCluster's
Slurm sees: its rendered slurm.conf when the site is up (membership during a move is what that file
says), else the site file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vocab.site import Site, collect_nodes, expand_nodes
from services.slurm.render import conf_members


class TrainRequestError(ValueError):
    """A `strata train` request the vCluster cannot run; the message names the count and a fix."""


@dataclass(frozen=True)
class Capacity:
    """A vCluster's members and its partitions' nodes, and which file said so."""

    members: tuple[str, ...]
    partitions: dict[str, tuple[str, ...]]
    default: str | None  # the partition jobs without -p go to
    source: str


_PARTITION_LINE = re.compile(r"^PartitionName=(\S+)(.*)$", re.M)


def capacity_from_conf(text: str, source: str) -> Capacity:
    """Members and partitions of a rendered slurm.conf (a partition without Nodes= has none)."""
    partitions, default = {}, None
    for name, rest in _PARTITION_LINE.findall(text):
        fields = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
        partitions[name] = tuple(expand_nodes(fields.get("Nodes", "")))
        if fields.get("Default", "").upper() == "YES":
            default = name
    return Capacity(tuple(conf_members(text)), partitions, default, source)


def capacity_from_site(site: Site, vcluster: str) -> Capacity:
    """Members and partitions as the site file puts them (a partition without nodes: spans all members)."""
    members = site.members(vcluster)
    partitions, default = {}, None
    for p in site.vclusters[vcluster].partitions:
        span = set(expand_nodes(p.nodes)) if p.nodes is not None else set(members)
        partitions[p.name] = tuple(n for n in members if n in span)
        default = p.name if p.default else default
    return Capacity(tuple(members), partitions, default, str(site.path))


def capacity_of(site: Site, vcluster: str, slurm_conf: Path) -> Capacity:
    """What the running site's slurm.conf says, else (site not up yet) the site file."""
    if slurm_conf.is_file():
        return capacity_from_conf(slurm_conf.read_text(), str(slurm_conf))
    return capacity_from_site(site, vcluster)


def _nodes(names: tuple[str, ...]) -> str:
    return f"{len(names)} node(s)" + (f" ({collect_nodes(list(names))})" if names else "")


def check_nodes(cap: Capacity, vcluster: str, nodes: int, partition: str | None, site_file: str) -> None:
    """Raise TrainRequestError when `nodes` do not fit the vCluster or the partition the job would go to."""
    move = f"move nodes into {vcluster} (edit {site_file}, then `strata apply`)"
    if not cap.members:
        raise TrainRequestError(f"vCluster {vcluster} has no nodes, as {cap.source} says; the job would pend "
                                f"forever. Use another --vcluster, or {move}")
    if nodes > len(cap.members):
        raise TrainRequestError(f"--nodes {nodes}: vCluster {vcluster} has {_nodes(cap.members)}, as {cap.source} "
                                f"says; the job would pend forever. Use --nodes {len(cap.members)} or fewer, "
                                f"another --vcluster, or {move}")
    if partition is not None and partition not in cap.partitions:
        raise TrainRequestError(f"--partition {partition}: vCluster {vcluster} has no such partition "
                                f"(known: {', '.join(cap.partitions) or 'none'}, in {cap.source})")
    chosen = partition or cap.default
    if chosen is None:
        return  # no default partition: sbatch itself refuses a job without -p, at once
    span = cap.partitions[chosen]
    if nodes > len(span):
        fits = [f"{p} ({len(n)} nodes)" for p, n in cap.partitions.items() if p != chosen and len(n) >= nodes]
        fixes = ([f"--nodes {len(span)} or fewer"] if span else []) + (
            [f"another --partition: {', '.join(fits)}"] if fits else [])
        raise TrainRequestError(f"--nodes {nodes}: partition {chosen} of {vcluster} has {_nodes(span)}, as "
                                f"{cap.source} says; the job would pend forever. Use "
                                + (" or ".join(fixes) or f"another --vcluster, or {move}"))
