"""Site operations behind `strata up/down/plan/apply/status` and the Pulumi provider (one code path)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from iac.journal import Journal
from vocab.layout import Layout
from iac.moves import MOVING, MoveRunner, Outcome
from iac.plan import Plan, make_plan
from iac.drivers.nodes import nodes_of
from iac.ssh_plane import plane_for
from vocab.ssh import check_ssh_files
from vocab.site import Site, SiteError
from services.ansible.engine import install_container_engine
from services.slurm.control import SlurmError
from services.slurm.daemons import DaemonError, check_installed
from vocab.names import owner_key


class StateError(Exception):
    """The observed state is inconsistent or a daemon is missing; the message says what to do."""


class SiteOps:
    def __init__(self, site: Site, state: Path | None = None, say: Callable[[str], None] = print):
        self.site = site
        self.layout = Layout.of(site, state)
        self.say = say
        self.planes = {v: plane_for(site, self.layout, v) for v in site.vclusters}
        self.nodes = nodes_of(site, self.layout)
        self.journal = Journal(self.layout.journal)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One operation at a time per site (Pulumi updates resources in parallel).

        Only root may: the local driver starts and stops every daemon of the site as root.
        """
        # issue 8, in progress: an ssh site's controllers and nodes are configured over SSH (ssh_plane.py,
        # drivers/nodes.py, the vcluster_* playbooks), but nodes do not yet register valid on the lab. Refuse
        # here (every command that starts, moves or stops daemons takes this lock) until they do.
        if self.site.spec.driver == "ssh":
            raise StateError(f"the ssh driver cannot yet start a site: {self.site.path} says driver: ssh, and its "
                             "nodes do not yet come up valid on the lab; `strata plan` shows this site's moves, "
                             "`strata lab up` builds its hosts, and driver: local (sites/local.yaml) runs here")
        if self.site.spec.driver == "local" and os.geteuid() != 0:
            raise StateError(f"site {self.site.name} runs its Slurm daemons as root: run this command as root "
                             f"(e.g. sudo strata …); you are uid {os.geteuid()}")
        try:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            f = open(self.layout.lock, "w")
        except PermissionError:
            raise StateError(f"cannot take the site lock {self.layout.lock}: permission denied; "
                             "run as the user who owns the state dir (root)") from None
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    # ---- which daemon is down ----
    def down_daemons(self, names=None) -> list[str]:
        """A line for each daemon of these vClusters that is not running or not answering, with the fix."""
        out = []
        fix = f"`strata up --site {self.site.path}` starts it again; then re-run the command"
        for v in names or self.planes:
            plane = self.planes[v]
            pid = plane.munged.pid()
            if not pid:
                out.append(f"munged of vCluster {v} is not running (pid file {plane.munged.pidfile}); {fix}")
            elif not munge_answers(plane.munged.socket):
                out.append(f"munged of vCluster {v} (pid {pid}) does not answer on {plane.munged.socket}; "
                           f"stop it (kill {pid}), then {fix}")
            if not plane.ctld.pid():
                out.append(f"slurmctld of vCluster {v} is not running (log {plane.ctld.log}); {fix}")
        return out

    @contextmanager
    def blaming(self, names=None) -> Iterator[None]:
        """Turn a failed Slurm call into the daemon that is down, when one is (else the error as it is)."""
        try:
            yield
        except SlurmError as e:  # a client call failed: the daemon that is down says why better than Slurm
            # a daemon killed a moment ago may still be exiting when its client fails: look for a while
            deadline = time.monotonic() + 10
            while not (down := self.down_daemons(names)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if down:
                raise DaemonError("\n".join(down)) from None
            raise e
        except DaemonError as e:
            # a daemon that failed to start says why itself (a port in use, …); only a munged that is down
            # or hung is the better culprit, of a controller "not answering"
            down = [d for d in self.down_daemons(names) if d.startswith("munged")]
            if down:
                raise DaemonError("\n".join(down)) from None
            raise e

    # ---- observing ----
    def observe(self) -> dict[str, str | None]:
        """Owner of every site node as the rendered slurm.conf files say (None = free pool)."""
        owner: dict[str, str | None] = dict.fromkeys(self.site.nodes)
        for v, plane in self.planes.items():
            for n in plane.members():
                if owner.get(n):
                    raise StateError(f"{n} is listed in the slurm.conf of both {owner[n]} and {v}; this is a bug, report it")
                owner[n] = v
        return owner

    def pending_resume(self, observed: dict[str, str | None]) -> set[str]:
        """Nodes in their vCluster whose move did not reach its resume step."""
        pending = {n for n, t in self.journal.moving().items() if owner_key(observed.get(n)) == t and observed.get(n)}
        for v, plane in self.planes.items():
            if not (plane.munged.pid() and plane.ctld.pid()):  # this machine's munged first: no SSH for a site that is down
                continue
            for n, st in plane.slurm.nodes().items():
                if st.drain and st.reason.startswith(MOVING):
                    pending.add(n)
        return pending

    def plan(self, desired: dict[str, str | None] | None = None) -> Plan:
        observed = self.observe()
        return make_plan(self.site, observed, self.pending_resume(observed), desired)

    def fresh(self) -> bool:
        return not any(self.layout.slurm_conf(v).exists() for v in self.site.vclusters)

    # ---- lifecycle ----
    def _start(self) -> None:
        """Start every controller and the slurmd of every observed member (idempotent)."""
        check_installed()
        if self.site.spec.driver == "ssh":
            problems = check_ssh_files(self.site, self.layout)
            if problems:
                raise SiteError(self.site.path, problems)
        for name, plane in self.planes.items():
            with self.blaming([name]):
                plane.up()
        hung = self.down_daemons()  # a munged that runs but does not answer is not restarted by up()
        if hung:
            raise DaemonError("\n".join(hung))
        owned = {n: o for n, o in self.observe().items() if o}
        started = self.nodes.ensure(owned)
        if started:
            for v in sorted({owned[n] for n in started}):
                self.planes[v].reload_slurmds()
            self.say(f"started slurmd on {len(started)} node(s)")

    def up(self) -> list[Outcome]:
        """Bring the site up as it was; on a fresh state dir, admit every node to its vCluster.

        Otherwise no node moves, but a move interrupted before its last step (resume) is finished.
        """
        with self.locked():
            fresh = self.fresh()
            self._start()
            outcomes = self._apply(None if fresh else self.observe(), timeout=60, force=False)
            if self.site.spec.driver == "local":  # the engine reaches ssh nodes in a later step (README)
                self._install_engine()
            return outcomes

    def _install_engine(self) -> None:
        """The container-engine vService of every vCluster offering it (idempotent: files rewritten only if
        changed, the SPANK plugin built once)."""
        offering = [v for v, vc in self.site.vclusters.items() if "container-engine" in vc.vservices]
        run = install_container_engine(Path(self.site.path), self.layout.root.parent, self.layout.ansible_dir,
                                       offering)
        if run and any(run.changed.values()):
            self.say(f"container engine installed on {', '.join(v for v, c in run.changed.items() if c)}")

    def down(self, purge: bool = False) -> None:
        """Stop every daemon of the site by pid; keep the state unless purge."""
        with self.locked():
            self.nodes.stop([n for n, o in self.observe().items() if o] if self.site.spec.driver == "ssh"
                            else list(self.site.nodes))  # local: also a slurmd left by a crash mid-detach
            for plane in self.planes.values():
                plane.down()
        if purge:
            shutil.rmtree(self.layout.root, ignore_errors=True)

    def apply(
        self, desired: dict[str, str | None] | None = None, timeout: float = 600, force: bool = False
    ) -> list[Outcome]:
        """Move nodes until observed owners equal `desired` (default: the site file's)."""
        with self.locked():
            self._start()
            return self._apply(desired, timeout, force)

    def _apply(self, desired, timeout: float, force: bool) -> list[Outcome]:
        plan = self.plan(desired)
        if plan.problems:
            raise StateError("\n".join(plan.problems))
        runner = MoveRunner(self.site, self.layout, self.planes, self.journal, self.nodes, timeout=timeout, force=force,
                            say=self.say)
        with self.blaming():
            return runner.run(plan)

    # ---- status ----
    def status(self) -> dict:
        """Platforms -> vClusters -> nodes with their Slurm state, plus the free pool."""
        observed = self.observe()
        moving = self.journal.moving()
        out = {"site": self.site.name, "state_dir": str(self.layout.root), "platforms": [], "free_pool": []}
        for pname, plat in self.site.spec.platforms.items():
            vcs = []
            for v in plat.vclusters:
                plane = self.planes[v]
                up = plane.running()
                states = {}
                if up:
                    try:
                        states = plane.slurm.nodes()
                    except SlurmError:
                        up = False
                nodes = []
                for n in plane.members():
                    st = states.get(n)
                    nodes.append({
                        "node": n,
                        "state": st.short if st else ("unknown" if up else "controller down"),
                        "reason": st.reason if st else "",
                        "slurmd": "running" if self.nodes.running(n) else "stopped",
                        "moving_to": moving.get(n) if moving.get(n) not in (None, v) else None,
                        "wanted": self.site.desired.get(n),
                    })
                vcs.append({
                    "vcluster": v, "controller": "running" if up else "stopped",
                    "port": self.layout.ctld_port(v), "slurm_conf": str(plane.conf),
                    "image": self.site.image_of(v), "nodes": nodes,
                })
            out["platforms"].append({"platform": pname, "vclusters": vcs})
        out["free_pool"] = [
            {"node": n, "moving_to": moving.get(n), "wanted": self.site.desired.get(n)}
            for n, o in observed.items() if o is None
        ]
        return out


def munge_answers(sock: Path, timeout: float = 3.0) -> bool:
    """munged encodes a credential on its socket (a stopped or hung daemon does not)."""
    try:
        return subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


__all__ = ["SiteOps", "StateError", "DaemonError"]
