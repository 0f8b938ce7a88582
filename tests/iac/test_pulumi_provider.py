"""The NodeMembership provider against the real local site (real slurmctld/slurmd/munged), and the whole
program through the `pulumi` CLI where one is installed.

A small site of 3 nodes (alpha: nid001, beta: nid002, free pool: nid003) runs in a temporary state dir
with its own ports. Membership is checked with Slurm's own `scontrol`, pointed at each vCluster's conf.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import subprocess
from pathlib import Path

import pytest
import yaml

from iac.ops import SiteOps
from iac.pulumi_provider import MoveError, NodeMembershipProvider
from vocab.site import load_site

REPO = Path(__file__).resolve().parents[2]


def write_site(path: Path, alpha: str = "nid001", beta: str = "nid002", base: int | None = None) -> Path:
    """A 3-node site shaped like sites/local.yaml, on its own ports (random unless given)."""
    path.write_text(yaml.safe_dump({
        "site": "pulumitest",
        "driver": "local",
        "ports": {"base": base or random.randrange(30000, 59001, 500)},
        "nodes": [{
            "names": "nid[001-003]",
            "hardware": {"cpus": 4, "memory_gib": 8, "arch": "aarch64",
                         "gpus": {"model": "gh200", "count": 4, "memory_gib": 96, "vboost": True}},
            "labels": {"cabinet": "x1000"},
        }],
        "platforms": {"ml": {"vclusters": {
            "alpha": {"nodes": alpha, "image": "ml-alpha", "vservices": ["slurm"]},
            "beta": {"nodes": beta, "image": "ml-beta", "vservices": ["slurm"]},
        }}},
    }, sort_keys=False))
    return path


def slurm_nodes(state: Path, site: str, vcluster: str) -> set[str]:
    """Nodes the vCluster's slurmctld knows, asked with plain scontrol."""
    conf = state / site / "vclusters" / vcluster / "etc" / "slurm.conf"
    r = subprocess.run(["scontrol", "show", "node", "-o"], env={**os.environ, "SLURM_CONF": str(conf)},
                       capture_output=True, text=True, timeout=30, check=True)
    return {line.split()[0].removeprefix("NodeName=") for line in r.stdout.splitlines() if line.startswith("NodeName=")}


def node_reason(state: Path, site: str, vcluster: str, node: str) -> str:
    conf = state / site / "vclusters" / vcluster / "etc" / "slurm.conf"
    r = subprocess.run(["scontrol", "show", "node", node], env={**os.environ, "SLURM_CONF": str(conf)},
                       capture_output=True, text=True, timeout=30, check=True)
    return next((ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("Reason=")), "")


@pytest.fixture(scope="module")
def real_site(tmp_path_factory):
    """The 3-node site brought up once for this module; always torn down (daemons stopped, state deleted)."""
    tmp = tmp_path_factory.mktemp("pulumi-site")
    # short state dir: slurmd's spool socket paths must stay under 108 chars
    site_path, state = write_site(tmp / "site.yaml"), Path(tempfile.mkdtemp(prefix="strata-pp-", dir="/tmp"))
    ops = SiteOps(load_site(site_path), state, say=lambda m: None)
    try:
        assert all(o.ok for o in ops.up())
        yield site_path, state.resolve()
    finally:
        ops.down(purge=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def site(real_site):
    """The running site, put back as its file says after each test."""
    site_path, state = real_site
    yield site_path, state
    ops = SiteOps(load_site(site_path), state, say=lambda m: None)
    plane = ops.planes["alpha"]
    st = plane.slurm.node("nid001")
    if st and st.drain and not st.ours:  # an admin drain a test set
        plane.slurm.resume(["nid001"])
    assert all(o.ok for o in ops.apply(timeout=30))


def props(site_path: Path, state: Path, node: str, vcluster: str) -> dict:
    """Inputs as the program declares them (see NodeMembershipArgs)."""
    return {"node": node, "vcluster": vcluster, "site": "pulumitest", "site_path": str(site_path),
            "state_dir": str(state), "timeout": 30.0, "force": False, "slurm_state": None}


def slurmd_pid(state: Path, site: str, node: str) -> str:
    return (state / site / "nodes" / node / "slurmd.pid").read_text().strip()


@pytest.mark.e2e
def test_create_update_delete_move_the_node(site):
    site_path, state = site
    p = NodeMembershipProvider()
    assert p.check({}, props(site_path, state, "nid003", "beta")).failures == []

    created = p.create(props(site_path, state, "nid003", "beta"))  # free pool -> beta
    assert created.id == "pulumitest/nid003"
    # right after a move the controller may still flag the node not responding for a moment (`idle*`)
    assert created.outs["vcluster"] == "beta" and created.outs["slurm_state"].rstrip("*") == "idle"
    assert "nid003" in slurm_nodes(state, "pulumitest", "beta")
    assert "nid003" not in slurm_nodes(state, "pulumitest", "alpha")

    news = props(site_path, state, "nid003", "alpha")
    d = p.diff(created.id, created.outs, news)
    assert d.changes is True and d.replaces == []
    updated = p.update(created.id, created.outs, news).outs  # beta -> alpha
    assert updated["vcluster"] == "alpha" and updated["slurm_state"].rstrip("*") == "idle"
    assert "nid003" in slurm_nodes(state, "pulumitest", "alpha")
    assert "nid003" not in slurm_nodes(state, "pulumitest", "beta")
    assert p.read(created.id, created.outs).outs["vcluster"] == "alpha"  # refresh sees where it is

    p.delete(created.id, updated)  # alpha -> free pool
    assert "nid003" not in slurm_nodes(state, "pulumitest", "alpha") | slurm_nodes(state, "pulumitest", "beta")
    assert p.read(created.id, updated).outs == {**updated, "vcluster": "free", "slurm_state": "free"}
    p.delete(created.id, updated)  # deleting again is harmless


@pytest.mark.e2e
def test_create_of_a_node_already_in_place_moves_nothing(site):
    """The first `pulumi up` on a running site adopts every node where it is."""
    site_path, state = site
    pid = slurmd_pid(state, "pulumitest", "nid001")
    outs = NodeMembershipProvider().create(props(site_path, state, "nid001", "alpha")).outs
    assert outs["vcluster"] == "alpha" and outs["slurm_state"] == "idle"
    assert slurmd_pid(state, "pulumitest", "nid001") == pid  # same slurmd: not drained, detached, restarted
    assert "nid001" in slurm_nodes(state, "pulumitest", "alpha")


@pytest.mark.e2e
def test_move_held_by_an_admin_drain_fails_with_the_outcome(site):
    site_path, state = site
    p = NodeMembershipProvider()
    env = {**os.environ, "SLURM_CONF": str(state / "pulumitest/vclusters/alpha/etc/slurm.conf")}
    subprocess.run(["scontrol", "update", "NodeName=nid001", "State=DRAIN", "Reason=admin: bad dimm"],
                   env=env, check=True, capture_output=True)
    olds = props(site_path, state, "nid001", "alpha")
    with pytest.raises(MoveError, match=r"nid001: held moving alpha -> beta: drained by someone else"):
        p.update("pulumitest/nid001", olds, props(site_path, state, "nid001", "beta"))
    assert "nid001" in slurm_nodes(state, "pulumitest", "alpha")
    assert "nid001" not in slurm_nodes(state, "pulumitest", "beta")
    assert node_reason(state, "pulumitest", "alpha", "nid001").startswith("Reason=admin: bad dimm")


def test_check_rejects_what_the_site_file_does_not_define(tmp_path):
    site_path, p = write_site(tmp_path / "site.yaml"), NodeMembershipProvider()
    failures = p.check({}, props(site_path, tmp_path, "nid003", "gamma")).failures
    assert [(f.property, "gamma" in f.reason) for f in failures] == [("vcluster", True)]
    failures = p.check({}, props(site_path, tmp_path, "nid009", "")).failures
    assert [f.property for f in failures] == ["node"]
    assert p.check({}, props(site_path, tmp_path, "nid003", "")).failures == []


# ---- the whole program through the pulumi CLI (only where it is installed) -------------------------------

def pulumi_cli(args: list[str], cwd: Path, env: dict) -> str:
    r = subprocess.run(["pulumi", *args, "--non-interactive"], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"pulumi {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def preview_ops(project: Path, env: dict) -> dict[str, str]:
    """`pulumi preview --json`: the planned operation of each NodeMembership, by node."""
    steps = json.loads(pulumi_cli(["preview", "--json"], project, env)).get("steps", [])
    return {s["urn"].rsplit("::", 1)[1]: s["op"] for s in steps if "NodeMembership" in s["urn"]}


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("pulumi") is None, reason="the pulumi CLI is not on PATH (it cannot be installed here)")
def test_pulumi_up_moves_a_node_as_an_update(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "Pulumi.yaml", project)
    shutil.copytree(REPO / "iac", project / "iac", ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".venv").symlink_to(REPO / ".venv")
    base = random.randrange(30000, 59001, 500)
    site_path, state = write_site(project / "site.yaml", base=base), Path(tempfile.mkdtemp(prefix="strata-pl-", dir="/tmp"))
    env = {**os.environ, "PULUMI_HOME": str(tmp_path / "pulumi-home"), "PULUMI_CONFIG_PASSPHRASE": "",
           "PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_BACKEND_URL": f"file://{tmp_path / 'backend'}"}
    env.pop("PULUMI_ACCESS_TOKEN", None)
    pulumi_cli(["login", f"file://{tmp_path / 'backend'}"], project, env)
    pulumi_cli(["stack", "init", "local"], project, env)
    for key, value in (("site", "site.yaml"), ("stateDir", str(state)), ("moveTimeout", "30")):
        pulumi_cli(["config", "set", f"strata:{key}", value], project, env)
    try:
        assert set(preview_ops(project, env).values()) == {"create"}
        pulumi_cli(["up", "--yes", "--skip-preview"], project, env)
        assert "nid002" in slurm_nodes(state, "pulumitest", "beta")

        write_site(site_path, alpha="nid[001-002]", beta="", base=base)  # nid002: beta -> alpha
        planned = preview_ops(project, env)
        assert planned["nid002"] == "update"
        assert not {op for op in planned.values()} & {"create", "delete", "replace", "create-replacement"}
        pulumi_cli(["up", "--yes", "--skip-preview"], project, env)
        assert "nid002" in slurm_nodes(state, "pulumitest", "alpha")
        assert "nid002" not in slurm_nodes(state, "pulumitest", "beta")

        pulumi_cli(["destroy", "--yes", "--skip-preview"], project, env)
        assert not slurm_nodes(state, "pulumitest", "alpha")
    finally:
        SiteOps(load_site(site_path), state, say=lambda m: None).down(purge=True)
