"""Pure rendering of a vCluster's `slurm.conf` and `gres.conf` (Jinja2 templates beside this file).

The inputs are plain dataclasses so that rendering needs no Slurm, no state dir and no site file: the
IaC layer builds them (`iac/slurm_inputs.py`), `vocab/files.py` writes the result.
Output is stable: nodes and partitions are sorted, no timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import hostlist
import jinja2

MANAGED = "# Managed by strata: do not edit, changes are overwritten."


@dataclass(frozen=True)
class SlurmNode:
    """One NodeName= line."""

    name: str
    cpus: int
    real_memory_mb: int
    gpus: int = 0
    gpu_type: str = "gpu"
    gpu_files: str = ""  # e.g. /dev/nvidia[0-3]
    features: tuple[str, ...] = ()
    hostname: str | None = None  # local driver: this host
    addr: str | None = None  # local driver: 127.0.0.1
    port: int | None = None  # local driver: one slurmd port per node


@dataclass(frozen=True)
class SlurmPartition:
    name: str
    nodes: tuple[str, ...]
    default: bool = False
    max_time: str = "INFINITE"
    allow_groups: tuple[str, ...] = ()  # AllowGroups=; () leaves the key out (Slurm: ALL)


@dataclass(frozen=True)
class SlurmCluster:
    """Everything one vCluster's slurm.conf says."""

    name: str
    source: str  # the site file it was rendered from (named in the header)
    ctld_host: str
    ctld_port: int
    munge_socket: str
    state_dir: str
    ctld_pidfile: str
    ctld_log: str
    slurmd_spool: str
    slurmd_pidfile: str
    slurmd_log: str
    ctld_addr: str | None = None
    config_overrides: bool = False
    max_node_count: int = 1024
    # scripts run on the nodes around each job (services/prolog wrappers); None leaves the line out
    prolog: str | None = None
    epilog: str | None = None
    task_prolog: str | None = None
    nodes: tuple[SlurmNode, ...] = field(default_factory=tuple)
    partitions: tuple[SlurmPartition, ...] = field(default_factory=tuple)


@lru_cache(maxsize=None)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _header(c: SlurmCluster, what: str) -> str:
    return f"{MANAGED}\n# {what} of vCluster {c.name}, rendered from {c.source}."


def _sorted(c: SlurmCluster) -> SlurmCluster:
    parts = tuple(
        SlurmPartition(p.name, tuple(sorted(p.nodes)), p.default, p.max_time, tuple(sorted(p.allow_groups)))
        for p in sorted(c.partitions, key=lambda p: p.name)
    )
    return SlurmCluster(**{**c.__dict__, "nodes": tuple(sorted(c.nodes, key=lambda n: n.name)), "partitions": parts})


def render_slurm_conf(c: SlurmCluster) -> str:
    """The vCluster's slurm.conf as text."""
    c = _sorted(c)
    view = [
        {**p.__dict__, "nodes": hostlist.collect_hostlist(list(p.nodes)) if p.nodes else ""}
        for p in c.partitions
    ]
    return _env().get_template("slurm.conf.j2").render(c=_View(c, partitions=view), header=_header(c, "slurm.conf"))


def render_gres_conf(c: SlurmCluster) -> str:
    """The vCluster's gres.conf as text (one line per GPU node)."""
    c = _sorted(c)
    return _env().get_template("gres.conf.j2").render(c=c, header=_header(c, "gres.conf"))


class _View:
    """A cluster with some attributes replaced, for the template."""

    def __init__(self, c: SlurmCluster, **over):
        self._c, self._over = c, over

    def __getattr__(self, name):
        return self._over[name] if name in self._over else getattr(self._c, name)


_NODE_LINE = re.compile(r"^NodeName=(\S+)", re.M)


def conf_members(text: str) -> list[str]:
    """Node names of a rendered slurm.conf: what Slurm itself sees as the vCluster's members."""
    return [n for m in _NODE_LINE.findall(text) for n in hostlist.expand_hostlist(m)]
