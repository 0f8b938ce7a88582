"""What a move does to a node, per driver: stop its slurmd, reboot it into an image, configure it.

The move steps (iac/moves.py) and `strata up` call these and nothing driver-specific. The local driver
works on emulated nodes of this host; the ssh driver on real hosts, through the same kind of Ansible run.
"""

from __future__ import annotations

from dataclasses import dataclass

from iac.drivers import local
from services.ansible.runner import run_playbook
from services.ansible.slurm_node import configure_nodes
from services.slurm.daemons import running_slurmd, stop_slurmd
from vocab.layout import Layout
from vocab.site import Site


@dataclass
class LocalNodes:
    """Emulated nodes: one slurmd process each on this host, a directory standing for each node's `/`."""

    site: Site
    layout: Layout

    def running(self, node: str) -> bool:
        return bool(running_slurmd(self.layout, node))

    def stop(self, nodes: list[str]) -> None:
        for node in nodes:
            stop_slurmd(self.layout, node)

    def ensure(self, owners: dict[str, str]) -> list[str]:
        """Start the slurmd of member nodes that run none (after a power loss: their roots first); the
        nodes started."""
        missing = {n: vc for n, vc in owners.items() if not self.running(n)}
        for node, vc in missing.items():
            local.reboot(self.site.nodes[node], self.layout.node_root(node), vc, self.site.image_of(vc))
        self.configure(missing, "start")
        return sorted(missing)

    def reboot(self, node: str, vcluster: str | None) -> None:
        # a node in the free pool runs nothing: also stops a slurmd left by a crash mid-detach
        stop_slurmd(self.layout, node)
        local.reboot(self.site.nodes[node], self.layout.node_root(node), vcluster, self.site.image_of(vcluster))

    def configure(self, owners: dict[str, str | None], label: str) -> None:
        configure_nodes(self.site, self.layout, owners, label)


@dataclass
class SshNodes:
    """Real hosts: slurmd and munged on each, configured over SSH by the vcluster_node playbook."""

    site: Site
    layout: Layout

    def running(self, node: str) -> bool:
        from iac.drivers import ssh

        r = ssh.run(self.site, self.layout, self.site.nodes[node].address,
                    "pid=$(cat /run/slurmd.pid 2>/dev/null) && kill -0 $pid 2>/dev/null")
        return r.returncode == 0

    def stop(self, nodes: list[str]) -> None:
        self.configure(dict.fromkeys(nodes), "stop")

    def ensure(self, owners: dict[str, str]) -> list[str]:
        """Configure every member node as its vCluster says (one idempotent run: a changed conf reaches
        running slurmds too); the nodes where something changed."""
        run = self.configure(owners, "start")
        return sorted(h for h, n in (run.changed if run else {}).items() if n)

    def reboot(self, node: str, vcluster: str | None) -> None:
        from iac.drivers import ssh

        ssh.reboot(self.site, self.layout, node, self.site.image_of(vcluster))

    def configure(self, owners: dict[str, str | None], label: str):
        from iac.drivers import ssh

        if not owners:
            return None
        hosts = {}
        for node, vc in owners.items():
            hosts[node] = {
                **ssh.inventory_vars(self.site, self.layout, self.site.nodes[node].address),
                "slurm_compute_state": "started" if vc else "stopped",
                "strata_service_mgr": self.site.spec.service_manager,
            }
            if vc:
                hosts[node]["munge_key_src"] = str(self.layout.munge_dir(vc) / "munge.key")
                hosts[node]["slurm_conf_src"] = str(self.layout.slurm_conf(vc).with_name("slurm.hosts.conf"))
                hosts[node]["gres_conf_src"] = str(self.layout.slurm_conf(vc).with_name("gres.conf"))
                # munged runs as root where no service manager runs it as `munge`
                hosts[node]["munge_key_owner"] = "munge" if self.site.spec.service_manager == "systemd" else "root"
        return run_playbook("vcluster_node", hosts, self.layout.ansible_dir, label, connection="ssh")


def nodes_of(site: Site, layout: Layout):
    """The node operations of the site's driver."""
    return SshNodes(site, layout) if site.spec.driver == "ssh" else LocalNodes(site, layout)
