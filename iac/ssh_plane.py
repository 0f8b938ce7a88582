"""A vCluster's control plane on a site of real hosts (driver: ssh).

Its munged + slurmctld run on the vCluster's controller host, configured over SSH by the
vcluster_controller playbook (the vCluster's munge key, its slurm.conf, the daemons). strata itself keeps,
on this machine, a munged with the same key and a client slurm.conf: its Slurm clients (scontrol, squeue,
sbatch) talk to the controller over the network like any login node. Membership is still what the
rendered slurm.conf in the state dir says; the hosts get a copy of it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from iac.drivers import ssh
from iac.plane import Plane
from iac.slurm_inputs import slurm_cluster
from services.ansible.runner import run_playbook
from services.slurm.daemons import DaemonError
from services.slurm.render import render_gres_conf, render_slurm_conf
from vocab.files import write_atomic
from vocab.layout import Layout
from vocab.site import Site

PIDFILE = "/run/slurmctld.pid"


@dataclass(frozen=True)
class RemoteCtld:
    """The slurmctld on a vCluster's controller host, seen by pid over SSH."""

    site: Site
    layout: Layout
    vcluster: str

    @property
    def address(self) -> str:
        return self.site.vclusters[self.vcluster].controller.address

    @property
    def log(self) -> str:
        host = self.site.vclusters[self.vcluster].controller.host
        return f"{host}:/var/log/slurm/slurmctld.log"

    def pid(self) -> int | None:
        r = ssh.run(self.site, self.layout, self.address,
                    f"pid=$(cat {PIDFILE} 2>/dev/null) && kill -0 $pid 2>/dev/null && echo $pid", timeout=15)
        return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None

    def stop(self) -> None:
        ssh.run(self.site, self.layout, self.address,
                f"pid=$(cat {PIDFILE} 2>/dev/null) && kill $pid 2>/dev/null && "
                "for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; true")


class SshPlane(Plane):
    """Plane whose controller is a host of its own; the same membership rules and interface as Plane."""

    def __init__(self, site: Site, layout: Layout, name: str):
        super().__init__(site, layout, name)
        self.ctld = RemoteCtld(site, layout, name)  # type: ignore[assignment]
        self.hosts_conf = self.conf.with_name("slurm.hosts.conf")

    def write_configs(self, members: list[str]) -> bool:
        """The hosts' slurm.conf first, this machine's client copy last: the latter is the commit point."""
        hosts = slurm_cluster(self.site, self.layout, self.name, members, on_hosts=True)
        write_atomic(self.hosts_conf, render_slurm_conf(hosts))
        write_atomic(self.conf.with_name("gres.conf"), render_gres_conf(hosts))
        return write_atomic(self.conf, render_slurm_conf(slurm_cluster(self.site, self.layout, self.name, members)))

    def _controller(self, label: str) -> None:
        """Run the vcluster_controller playbook: key, conf, daemons; a changed conf restarts slurmctld."""
        ctl = self.site.vclusters[self.name].controller
        systemd = self.site.spec.service_manager == "systemd"
        host = {
            **ssh.inventory_vars(self.site, self.layout, ctl.address),
            "munge_key_src": str(self.layout.munge_dir(self.name) / "munge.key"),
            "munge_key_owner": "munge" if systemd else "root",
            "slurm_conf_src": str(self.hosts_conf),
            "gres_conf_src": str(self.conf.with_name("gres.conf")),
            "strata_service_mgr": self.site.spec.service_manager,
        }
        run_playbook("vcluster_controller", {ctl.host: host}, self.layout.ansible_dir, f"{self.name}-{label}",
                     connection="ssh")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.slurm.ping():
                return
            time.sleep(0.1)
        raise DaemonError(f"slurmctld of vCluster {self.name} on {self.ctld.address} is not answering; "
                          f"see {self.ctld.log}")

    def up(self) -> None:
        """Start this machine's munged (the key's first home), then the controller host's daemons."""
        self.layout.ctld_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.munged.start()
        self.write_configs(self.members())
        self._controller("up")
        self.reload_slurmds()

    def set_members(self, members: list[str], reload: bool = True) -> None:
        if not self.write_configs(members) and self.ctld.pid():
            return
        self.munged.start()
        self._controller("members")
        if reload:
            self.reload_slurmds()

    def reload_slurmds(self, timeout: float = 30, skip: frozenset[str] = frozenset()) -> None:
        """SIGHUP every member's slurmd (in parallel, over SSH): it re-reads slurm.conf and registers again."""
        hup = [n for n in self.members() if n not in skip]

        def one(node: str) -> bool:
            r = ssh.run(self.site, self.layout, self.site.nodes[node].address,
                        "pid=$(cat /run/slurmd.pid 2>/dev/null) && kill -HUP $pid 2>/dev/null")
            return r.returncode == 0

        with ThreadPoolExecutor(max_workers=16) as pool:
            expect = [n for n, ok in zip(hup, pool.map(one, hup)) if ok]
        self.wait_responding(expect, timeout)

    def down(self) -> None:
        self.ctld.stop()
        self.munged.stop()


def plane_for(site: Site, layout: Layout, name: str) -> Plane:
    """The control plane of vCluster `name` for the site's driver."""
    return SshPlane(site, layout, name) if site.spec.driver == "ssh" else Plane(site, layout, name)


__all__ = ["SshPlane", "RemoteCtld", "plane_for"]
