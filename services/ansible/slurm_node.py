"""The slurm_node role's one entry point: its host variables per node, and the playbook run.

`configure_nodes` is what the IaC layer calls to start (or stop) the slurmd of nodes for their vCluster;
the role (roles prolog, node_tuning, slurm_node) does the work on each node.
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.ansible.runner import run_playbook
from vocab.layout import Layout
from vocab.site import Site


def configure_nodes(site: Site, layout: Layout, owners: dict[str, str | None], label: str) -> None:
    """Run the slurm_node playbook: slurmd started for nodes given a vCluster, stopped for None."""
    if not owners:
        return
    hosts = {}
    for node, vc in owners.items():
        d = layout.node_dir(node)
        # a stopped node's slurmd is found by pid; its conf path only matters for starting
        conf = layout.slurm_conf(vc) if vc else Path("/dev/null")
        hosts[node] = {
            "slurm_node_state": "started" if vc else "stopped",
            "strata_vcluster": vc or "",
            "strata_node_root": str(layout.node_root(node)),
            "slurm_conf": str(conf),
            "slurmd_spool": str(d / "spool"),
            "slurmd_pidfile": str(layout.slurmd_pidfile(node)),
            "slurmd_log": str(d / "log/slurmd.log"),
            "slurmd_port": layout.node_port(node),
            "strata_python": sys.executable,
        }
    run_playbook("slurm_node", hosts, layout.ansible_dir, label)
