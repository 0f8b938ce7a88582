"""A vCluster's control plane (munged + slurmctld + rendered configs) and its nodes' slurmd.

Observed membership is what the rendered slurm.conf files say: a node is a member of the vCluster whose
slurm.conf lists it, and in the free pool when none does. Each conf write is atomic, and a move writes the
source (without the node) strictly before the target (with it), so no node is ever in two.
"""

from __future__ import annotations

import os
import signal
import time

from vocab.layout import Layout
from vocab.site import Site
from iac.slurm_inputs import prolog_wrappers, slurm_cluster
from services.slurm.access import groups_key
from services.slurm.control import SlurmClient
from services.slurm.daemons import Munged, Slurmctld, running_slurmd
from vocab.files import write_atomic
from services.slurm.render import conf_members, render_gres_conf, render_slurm_conf


class Plane:
    """One vCluster's control plane."""

    def __init__(self, site: Site, layout: Layout, name: str):
        self.site, self.layout, self.name = site, layout, name
        self.conf = layout.slurm_conf(name)
        access = site.vclusters[name].access
        self.munged = Munged(layout.munge_dir(name), f"vCluster {name}", access.groups if access else None,
                             str(site.path), groups_key(site, name))
        self.ctld = Slurmctld(
            self.conf, layout.ctld_pidfile(name), layout.log_dir(name) / "slurmctld.log",
            layout.ctld_port(name), f"vCluster {name}",
        )
        self.slurm = SlurmClient(self.conf)

    def members(self) -> list[str]:
        """Nodes the rendered slurm.conf lists (empty if never rendered)."""
        try:
            return conf_members(self.conf.read_text())
        except FileNotFoundError:
            return []

    def write_configs(self, members: list[str]) -> bool:
        """Render slurm.conf + gres.conf for exactly `members`; True if slurm.conf changed."""
        c = slurm_cluster(self.site, self.layout, self.name, members)
        # gres.conf and the prolog wrappers first: the slurm.conf write is the commit point of a membership change
        write_atomic(self.conf.with_name("gres.conf"), render_gres_conf(c))
        for path, text in prolog_wrappers(self.site, self.layout, self.name).items():
            write_atomic(path, text, mode=0o755)
        return write_atomic(self.conf, render_slurm_conf(c))

    def running(self) -> bool:
        return bool(self.munged.pid() and self.ctld.pid())

    def up(self) -> None:
        """Start munged and slurmctld (idempotent); renders an empty conf the first time.

        munged first: it checks the site's access groups exist before any conf names them. The conf is
        rendered again for its current members, so that a changed site file (access groups, partitions)
        reaches a running controller too: restarted when the conf changed.
        """
        self.munged.start()
        changed = self.write_configs(self.members())
        self.layout.ctld_dir(self.name).mkdir(parents=True, exist_ok=True)
        if not self.ctld.pid():
            self.ctld.start()
            self.reload_slurmds()  # members whose slurmd outlived the controller register again
        elif changed:
            self.ctld.restart()
            self.reload_slurmds()

    def set_members(self, members: list[str], reload: bool = True) -> None:
        """Change membership: write the conf, restart the controller, let the slurmds re-read it.

        Admission passes reload=False and reloads once the new slurmds run.
        """
        if not self.write_configs(members) and self.ctld.pid():
            return
        self.munged.start()
        self.ctld.restart()
        if reload:
            self.reload_slurmds()

    def reload_slurmds(self, timeout: float = 30, skip: frozenset[str] = frozenset()) -> None:
        """Make every member's slurmd re-read slurm.conf and re-register; wait until all answer.

        A restarted controller shows its members not responding until they register again, and
        `scontrol reconfigure` flags them not responding for about a second *after* it returns (seen
        here: `idle*` right after a move). SIGHUP (slurmd's own reconfigure) re-registers them at once.
        `skip`: slurmds started after the conf was written, which read it already.
        """
        expect = {}
        for n in self.members():
            pid = None if n in skip else running_slurmd(self.layout, n)
            if pid:
                os.kill(pid, signal.SIGHUP)
                expect[n] = pid
        self.wait_responding(list(expect), timeout)

    def wait_responding(self, nodes: list[str], timeout: float) -> None:
        """Until the controller sees every one of `nodes` responding (or the timeout)."""
        deadline = time.monotonic() + timeout
        while nodes and time.monotonic() < deadline:
            states = self.slurm.nodes()
            if all(states.get(n) and states[n].responding for n in nodes):
                return
            time.sleep(0.05)

    def down(self) -> None:
        self.ctld.stop()
        self.munged.stop()
