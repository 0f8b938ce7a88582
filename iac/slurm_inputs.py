"""Build the render inputs of a vCluster's Slurm configuration from the site and its state layout."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from vocab.layout import Layout
from vocab.site import Site, expand_nodes
from services.prolog.tuning import THP_FEATURES, VBOOST_FEATURES, VETNODE_FEATURE
from services.prolog.wrapper import WRAPPERS, WrapperInputs, render_wrapper
from services.slurm.render import SlurmCluster, SlurmNode, SlurmPartition


def node_features(site: Site, node: str) -> tuple[str, ...]:
    """Features a node announces (selectable with -C): GPU model, CPU architecture, the THP modes the
    prolog applies, `vetnode` (the prolog vets the node first), and vBoost where the GPUs support it."""
    hw = site.nodes[node].hardware
    gpu = [hw.gpus.model] if hw.gpus.count else []
    vboost = list(VBOOST_FEATURES) if hw.gpus.count and hw.gpus.vboost else []
    return tuple(sorted({hw.arch, *gpu, *THP_FEATURES, VETNODE_FEATURE, *vboost}))


def wrapper_path(site: Site, layout: Layout, vcluster: str, kind: str) -> Path:
    """Where slurmd finds a vCluster's prolog/epilog/taskprolog wrapper: beside its slurm.conf on the local
    site, /etc/slurm on a real node (shipped there with slurm.conf)."""
    etc = layout.slurm_conf(vcluster).parent if site.spec.driver == "local" else Path("/etc/slurm")
    return etc / WRAPPERS[kind]


def prolog_wrappers(site: Site, layout: Layout, vcluster: str) -> dict[Path, str]:
    """The wrapper scripts slurm.conf names, path in the state dir (beside slurm.conf) -> text.

    The plane writes them before slurm.conf; on the local site that is where slurmd runs them from.
    """
    local = site.spec.driver == "local"
    w = WrapperInputs(
        vcluster=vcluster,
        slurm_conf=str(layout.slurm_conf(vcluster)) if local else "/etc/slurm/slurm.conf",
        python=sys.executable,
        pythonpath=str(Path(__file__).resolve().parents[1]),
        node_dir=f"{layout.nodes_dir}/$SLURMD_NODENAME" if local else "/var/lib/strata/node",
        node_root="$STRATA_NODE_DIR/root" if local else "/",
    )
    etc = layout.slurm_conf(vcluster).parent
    return {etc / WRAPPERS[k]: render_wrapper(w, k) for k in WRAPPERS}


def slurm_node(site: Site, layout: Layout, node: str) -> SlurmNode:
    hw = site.nodes[node].hardware
    local = site.spec.driver == "local"
    gpu_dev = f"{layout.node_root(node)}/dev" if local else "/dev"
    files = f"{gpu_dev}/nvidia[0-{hw.gpus.count - 1}]" if hw.gpus.count > 1 else f"{gpu_dev}/nvidia0"
    return SlurmNode(
        name=node,
        cpus=hw.cpus,
        real_memory_mb=int(hw.memory_gib * 1024),
        gpus=hw.gpus.count,
        gpu_type=hw.gpus.model,
        # hosts standing for bigger nodes (the lab) have no GPU devices: their GPUs are counted, not found
        gpu_files=files if hw.gpus.count and (local or not site.spec.slurmd_config_overrides) else "",
        features=node_features(site, node),
        hostname=socket.gethostname() if local else node,
        addr="127.0.0.1" if local else site.nodes[node].address,
        port=layout.node_port(node) if local else None,
    )


def slurm_cluster(site: Site, layout: Layout, vcluster: str, members: list[str], on_hosts: bool = False) -> SlurmCluster:
    """The render input for `vcluster` with exactly `members` as its nodes.

    driver: ssh renders two: the one strata's own clients use here (`on_hosts=False`: this machine's munged
    of the vCluster), and the one its controller and nodes read (their own munged, Slurm's default socket).
    """
    vc = site.vclusters[vcluster]
    local = site.spec.driver == "local"
    ctl = vc.controller
    nodes_dir = layout.nodes_dir
    groups = vc.access.groups if vc.access else ()  # every partition: the vCluster is theirs as a whole
    parts = []
    for p in vc.partitions:
        span = set(expand_nodes(p.nodes)) if p.nodes is not None else set(members)
        parts.append(SlurmPartition(p.name, tuple(n for n in members if n in span), p.default, p.max_time, groups))
    return SlurmCluster(
        name=vcluster,
        source=str(site.path),
        ctld_host=socket.gethostname() if local else (ctl.host if ctl else f"{vcluster}-ctld"),
        ctld_addr="127.0.0.1" if local else (ctl.address if ctl else None),
        ctld_port=layout.ctld_port(vcluster),
        munge_socket="" if on_hosts else str(layout.munge_socket(vcluster)),
        state_dir=str(layout.ctld_dir(vcluster)) if local else "/var/spool/slurmctld",
        ctld_pidfile=str(layout.ctld_pidfile(vcluster)) if local else "/run/slurmctld.pid",
        ctld_log=str(layout.log_dir(vcluster) / "slurmctld.log") if local else "/var/log/slurm/slurmctld.log",
        slurmd_spool=f"{nodes_dir}/%n/spool" if local else "/var/spool/slurmd",
        slurmd_pidfile=f"{nodes_dir}/%n/slurmd.pid" if local else "/run/slurmd.pid",
        slurmd_log=f"{nodes_dir}/%n/log/slurmd.log" if local else "/var/log/slurm/slurmd.log",
        config_overrides=local or site.spec.slurmd_config_overrides,
        max_node_count=max(64, 2 * len(site.nodes)),
        # the prolog parts do not reach ssh nodes yet (they run strata's Python): no wrappers named there
        prolog=str(wrapper_path(site, layout, vcluster, "prolog")) if local else None,
        epilog=str(wrapper_path(site, layout, vcluster, "epilog")) if local else None,
        task_prolog=str(wrapper_path(site, layout, vcluster, "taskprolog")) if local else None,
        nodes=tuple(slurm_node(site, layout, n) for n in members),
        partitions=tuple(parts),
    )
