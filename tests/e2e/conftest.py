"""Small real sites for end-to-end tests: real munged, slurmctld and slurmd, in a temporary state dir."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def free_port_base(span: int = 100) -> int:
    """A base port whose next `span` ports are free now."""
    for _ in range(200):
        base = random.randrange(30000, 60000 - span, 100)
        ok = True
        for p in range(base, base + span):
            with socket.socket() as s:
                try:
                    s.bind(("", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def small_site(name: str, base: int, owners: dict[str, str]) -> dict:
    """nid[001-00N] with 4 GPUs each; owners maps vCluster -> hostlist."""
    vcs = {v: {"nodes": owners.get(v, ""), "image": f"img-{v}"} for v in ("alpha", "beta")}
    return {
        "site": name,
        "driver": "local",
        "ports": {"base": base},
        "nodes": [{"names": "nid[001-004]",
                   "hardware": {"cpus": 8, "memory_gib": 16, "gpus": {"count": 4, "memory_gib": 96}}}],
        "platforms": {
            "ml": {"vclusters": vcs},
            "hpc": {"vclusters": {"gamma": {"nodes": owners.get("gamma", ""), "image": "img-gamma"}}},
        },
    }


class SiteUnderTest:
    """A site file + state dir + helpers to drive it through the real CLI and Slurm clients."""

    def __init__(self, tmp: Path, name: str = "t", owners: dict[str, str] | None = None):
        self.tmp = tmp
        # slurmd's spool socket path must stay under 108 chars: pytest's tmp dirs are too deep for it
        self.state = Path(tempfile.mkdtemp(prefix="strata-e2e-", dir="/tmp"))
        self.file = tmp / f"{name}.yaml"
        self.data = small_site(name, free_port_base(), owners or {"alpha": "nid[001-002]", "beta": "nid003"})
        self.write()
        self.root = self.state / name

    def write(self) -> None:
        self.file.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def set_owner(self, node: str, vcluster: str | None) -> None:
        """Edit the site file: put node into vcluster (None: free pool)."""
        from vocab.site import collect_nodes, expand_nodes

        for plat in self.data["platforms"].values():
            for v, vc in plat["vclusters"].items():
                names = set(expand_nodes(vc["nodes"])) - {node}
                if v == vcluster:
                    names.add(node)
                vc["nodes"] = collect_nodes(names)
        self.write()

    def env(self, **extra) -> dict:
        return {**os.environ, "STRATA_STATE": str(self.state), **extra}

    def strata(self, *args: str, check: bool = True, timeout: float = 240, **env) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "strata.cli", *args, "--site", str(self.file)],
                           capture_output=True, text=True, env=self.env(**env), timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"strata {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def conf(self, vcluster: str) -> Path:
        return self.root / "vclusters" / vcluster / "etc" / "slurm.conf"

    def slurm(self, vcluster: str, *args: str, check: bool = True) -> str:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SLURM_CONF": str(self.conf(vcluster))})
        if check and r.returncode != 0:
            raise AssertionError(f"{args} failed: {r.stderr}")
        return r.stdout

    def members(self) -> dict[str, list[str]]:
        """vCluster -> nodes its slurm.conf lists."""
        from services.slurm.render import conf_members

        out = {}
        for plat in self.data["platforms"].values():
            for v in plat["vclusters"]:
                c = self.conf(v)
                out[v] = conf_members(c.read_text()) if c.exists() else []
        return out

    def node_state(self, vcluster: str, node: str):
        from services.slurm.control import SlurmClient

        return SlurmClient(self.conf(vcluster)).node(node)

    def sinfo(self, vcluster: str) -> dict[str, str]:
        """node -> sinfo state as Slurm's own client reports it."""
        out = self.slurm(vcluster, "sinfo", "-h", "-N", "-o", "%N %t")
        return dict(line.split() for line in out.splitlines()) if out.strip() else {}

    def sbatch(self, vcluster: str, node: str, script: str, *opts: str) -> str:
        out = self.slurm(vcluster, "sbatch", "--parsable", "-w", node, "-o", str(self.tmp / "job-%j.out"),
                         *opts, "--wrap", script)
        return out.strip().split(";")[0]

    def job(self, vcluster: str, job: str) -> dict[str, str]:
        out = self.slurm(vcluster, "scontrol", "show", "job", "-o", job)
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait_job(self, vcluster: str, job: str, states: tuple[str, ...], timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                info = self.job(vcluster, job)
            except AssertionError:  # the controller restarts during a move: ask again
                info = {}
            if info.get("JobState") in states:
                return info
            time.sleep(0.2)
        raise AssertionError(f"job {job} not in {states}: {self.job(vcluster, job)}")

    def status(self) -> dict:
        return json.loads(self.strata("status", "--json").stdout)

    def down(self) -> None:
        keep = [] if os.environ.get("STRATA_KEEP_STATE") else ["--purge"]  # keep logs to debug a failure
        subprocess.run([sys.executable, "-m", "strata.cli", "down", *keep, "--site", str(self.file)],
                       capture_output=True, env=self.env(), timeout=120)
        if keep:
            shutil.rmtree(self.state, ignore_errors=True)


def require_slurm():
    if os.geteuid() != 0:
        pytest.skip("the local site runs Slurm daemons as root")
    if not shutil.which("slurmctld"):
        pytest.fail("Slurm is not installed: run `make setup` (the e2e tests drive real daemons)")


@pytest.fixture
def site(tmp_path):
    require_slurm()
    s = SiteUnderTest(tmp_path)
    try:
        s.strata("up")
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory):
    """One site for a module's tests that leave it as they found it."""
    require_slurm()
    s = SiteUnderTest(tmp_path_factory.mktemp("site"))
    try:
        s.strata("up")
        yield s
    finally:
        s.down()
