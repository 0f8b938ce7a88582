"""Where a site keeps its state, and which ports its daemons use.

The on-disk layout of a site's services (daemons' files, node roots, engine state), shared by every layer
that finds them: iac (moves, the plane), services (prolog wrappers), user_envs (engine config). It depends
on the site model only, so it lives below all of them.

State lives under `$STRATA_STATE/<site>/` (default `/var/lib/strata`):
`vclusters/<name>/{etc,munge,ctld,log}`, `nodes/<nid>/{root,spool,log}`, `journal.jsonl`, `ansible/`,
`ssh/` (driver: ssh).
Ports are fixed per site: a node keeps its slurmd port when it moves, so a move never renumbers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vocab.site import Site
from vocab.names import MUNGE_SOCKET

DEFAULT_STATE = "/var/lib/strata"
# the embedded local site, found from the installed code (so `cd / && strata status` works too)
EMBEDDED_SITE = str(Path(__file__).resolve().parents[1] / "sites" / "local.yaml")
PORT_SPAN = 500  # ports one site may use: vCluster controllers first, then one per node
NODE_PORT_OFFSET = 50


def state_root() -> Path:
    """The state dir from STRATA_STATE (default /var/lib/strata)."""
    return Path(os.environ.get("STRATA_STATE") or DEFAULT_STATE)


@dataclass(frozen=True)
class Layout:
    """Paths and ports of one site's state."""

    site: Site
    root: Path  # $STRATA_STATE/<site>

    @classmethod
    def of(cls, site: Site, state: Path | None = None) -> "Layout":
        return cls(site, (state or state_root()).resolve() / site.name)

    # ---- ports ----
    @property
    def port_base(self) -> int:
        """First port; from the site file, else derived from the state path so two sites differ."""
        if self.site.spec.ports.base is not None:
            return self.site.spec.ports.base
        digest = int(hashlib.sha256(str(self.root).encode()).hexdigest(), 16)
        return 20000 + (digest % 80) * PORT_SPAN  # 20000..59500

    def ctld_port(self, vcluster: str) -> int:
        return self.port_base + self.site.vcluster_index(vcluster)

    def node_port(self, node: str) -> int:
        return self.port_base + NODE_PORT_OFFSET + self.site.nodes[node].index

    # ---- site-wide files ----
    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def ansible_dir(self) -> Path:
        return self.root / "ansible"

    # ---- the ssh driver's login: the site file's paths, else these under the state dir ----
    @property
    def ssh_key(self) -> Path:
        """Private key strata logs in with (`ssh.key`, default `ssh/id_ed25519`)."""
        return Path(self.site.ssh.key) if self.site.ssh.key else self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The hosts' keys strata checks (`ssh.known_hosts`, default `ssh/known_hosts`)."""
        return Path(self.site.ssh.known_hosts) if self.site.ssh.known_hosts else self.root / "ssh" / "known_hosts"

    # ---- per vCluster ----
    def vcluster_dir(self, vcluster: str) -> Path:
        return self.root / "vclusters" / vcluster

    def slurm_conf(self, vcluster: str) -> Path:
        return self.vcluster_dir(vcluster) / "etc" / "slurm.conf"

    def munge_dir(self, vcluster: str) -> Path:
        return self.vcluster_dir(vcluster) / "munge"

    def munge_socket(self, vcluster: str) -> Path:
        return self.munge_dir(vcluster) / MUNGE_SOCKET

    def ctld_dir(self, vcluster: str) -> Path:
        return self.vcluster_dir(vcluster) / "ctld"

    def ctld_pidfile(self, vcluster: str) -> Path:
        return self.ctld_dir(vcluster) / "slurmctld.pid"

    def log_dir(self, vcluster: str) -> Path:
        return self.vcluster_dir(vcluster) / "log"

    # ---- per node ----
    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    def node_dir(self, node: str) -> Path:
        return self.nodes_dir / node

    def node_root(self, node: str) -> Path:
        """What stands for the node's `/` on the local driver."""
        return self.node_dir(node) / "root"

    def slurmd_pidfile(self, node: str) -> Path:
        return self.node_dir(node) / "slurmd.pid"
