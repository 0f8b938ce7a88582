"""Policies of the Pulumi program's wiring, checked with Pulumi's mocks (no CLI, no engine, no daemons).

Under mocks a dynamic provider is never called, so these tests check what the program declares: which
resources, with which parents, URNs and inputs. The provider itself is tested against the real local site
in test_pulumi_provider.py.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pytest
import yaml
from pulumi.runtime import config as pulumi_config
from pulumi.runtime.mocks import MockMonitor

from iac.pulumi_config import StackConfig, read_config, resolve_config
from iac.pulumi_provider import NodeMembershipProvider
from iac.pulumi_resources import build_site
from vocab.site import load_site

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "sites/local.yaml"
MEMBERSHIP = "pulumi-python:dynamic/strata:NodeMembership"
SITE, VCLUSTER = "strata:index:Site", "strata:index:VCluster"


@dataclass
class Registered:
    urn: str
    type: str
    name: str
    parent: str
    inputs: dict


class Recorder(MockMonitor):
    """A mock engine that remembers every registration with its parent (MockMonitor keeps no parent)."""

    def __init__(self):
        class Echo(pulumi.runtime.Mocks):
            def new_resource(self, args):
                return f"{args.name}-id", args.inputs

            def call(self, args):
                return {}

        super().__init__(Echo())
        self.seen: list[Registered] = []

    def RegisterResource(self, request):
        out = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = self.resources[out.urn].state
            self.seen.append(Registered(out.urn, request.type, request.name, request.parent, dict(inputs)))
        return out

    def of_type(self, t: str) -> dict[str, Registered]:
        return {r.name: r for r in self.seen if r.type == t}


def run_program(make, *, project="strata", stack="test") -> Recorder:
    """Run `make()` (declares resources) as a Pulumi program under fresh mocks; return what it declared."""
    rec = Recorder()
    pulumi.runtime.set_mocks(rec.mocks, project=project, stack=stack, preview=False, monitor=rec)

    @pulumi.runtime.test
    def program():
        site = make()
        return site.free_pool if site is not None else None  # awaited: every registration has finished

    program()
    return rec


def program_for(site_path: Path, state_dir: Path) -> Recorder:
    return run_program(lambda: build_site(resolve_config(str(site_path), str(state_dir))))


def with_node_moved(tmp_path: Path, node: str, source: str, target: str) -> Path:
    """A copy of sites/local.yaml in which `node` moves from `source` to `target`."""
    data = yaml.safe_load(LOCAL.read_text())
    vcs = {v: vc for p in data["platforms"].values() for v, vc in p["vclusters"].items()}
    site = load_site(LOCAL)
    vcs[source]["nodes"] = ",".join(n for n in site.members(source) if n != node)
    vcs[target]["nodes"] = ",".join([*site.members(target), node])
    out = tmp_path / "moved.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def test_every_node_has_exactly_one_membership(tmp_path):
    site = load_site(LOCAL)
    rec = program_for(LOCAL, tmp_path)
    names = [r.name for r in rec.seen if r.type == MEMBERSHIP]
    assert sorted(names) == sorted(site.nodes) and len(names) == len(set(names))
    for node, r in rec.of_type(MEMBERSHIP).items():
        assert r.inputs["node"] == node
        assert r.inputs["vcluster"] == (site.desired[node] or "")


def test_membership_parent_is_site_not_vcluster(tmp_path):
    before = program_for(LOCAL, tmp_path)
    after = program_for(with_node_moved(tmp_path, "nid006", "clariden", "bristen"), tmp_path)

    site_urn = before.of_type(SITE)["local"].urn
    assert all(r.parent == site_urn for r in before.of_type(MEMBERSHIP).values())
    # the move changes the membership's input, not its identity: same URNs, so Pulumi plans an update
    assert {r.urn for r in before.of_type(MEMBERSHIP).values()} == {r.urn for r in after.of_type(MEMBERSHIP).values()}
    assert before.of_type(MEMBERSHIP)["nid006"].inputs["vcluster"] == "clariden"
    assert after.of_type(MEMBERSHIP)["nid006"].inputs["vcluster"] == "bristen"
    assert after.of_type(MEMBERSHIP)["nid006"].urn.endswith(f"::{SITE}${MEMBERSHIP}::nid006")


def test_one_component_per_vcluster(tmp_path):
    site = load_site(LOCAL)
    rec = program_for(LOCAL, tmp_path)
    assert [r.name for r in rec.seen if r.type == SITE] == ["local"]
    vcs = rec.of_type(VCLUSTER)
    assert sorted(vcs) == sorted(site.vclusters) and len(vcs) == len([r for r in rec.seen if r.type == VCLUSTER])
    site_urn = rec.of_type(SITE)["local"].urn
    assert all(r.parent == site_urn for r in vcs.values())


def test_vcluster_components_report_their_members(tmp_path):
    site = load_site(LOCAL)
    got: dict[str, list[str]] = {}

    def make():
        s = build_site(resolve_config(str(LOCAL), str(tmp_path)))
        for name, vc in s.vclusters.items():
            vc.members.apply(lambda m, name=name: got.setdefault(name, m))
        return s

    run_program(make)
    assert got == {v: site.members(v) for v in site.vclusters}


def test_membership_inputs_are_plain_data(tmp_path):
    """Dynamic providers run in another process: a membership carries strings, numbers and booleans only."""
    rec = program_for(LOCAL, tmp_path)
    r = rec.of_type(MEMBERSHIP)["nid001"]
    inputs = {k: v for k, v in r.inputs.items() if k not in ("__provider", "slurm_state")}
    assert inputs == {
        "node": "nid001", "vcluster": "clariden", "site": "local", "site_path": str(LOCAL),
        "state_dir": str(tmp_path.resolve()), "timeout": 600.0, "force": False,
    }


def test_membership_change_is_an_update_not_a_replace(tmp_path):
    provider = NodeMembershipProvider()
    olds = {
        "node": "nid006", "vcluster": "clariden", "site": "local", "site_path": str(LOCAL),
        "state_dir": str(tmp_path), "timeout": 600.0, "force": False,
        "slurm_state": "idle", "__provider": "opaque",  # outputs and the provider sit in the old state too
    }
    news = {**olds, "vcluster": "bristen", "slurm_state": None, "__provider": "opaque2"}
    d = provider.diff("local/nid006", olds, news)
    assert d.changes is True and d.replaces == []
    # to or from the free pool is a move as well
    assert provider.diff("local/nid006", olds, {**olds, "vcluster": "free"}).replaces == []
    # nothing changed: no update (outputs and the serialized provider do not count)
    assert provider.diff("local/nid006", olds, {**olds, "slurm_state": None, "__provider": "x"}).changes is False
    # a different node or site is a different real thing: replaced, its node given back first
    for key, value in (("node", "nid007"), ("site", "other"), ("state_dir", "/elsewhere")):
        d = provider.diff("local/nid006", olds, {**olds, key: value})
        assert d.replaces == [key] and d.delete_before_replace is True


def test_program_reads_stack_config(tmp_path, monkeypatch):
    """`iac/__main__.py` run as Pulumi runs it, with stack config set as `pulumi config set` would."""
    monkeypatch.chdir(REPO)
    moved = with_node_moved(tmp_path, "nid005", "clariden", "eiger")
    pulumi_config.set_all_config({
        "strata:site": str(moved), "strata:stateDir": "state", "strata:moveTimeout": "42", "strata:force": "true",
    })
    try:
        assert read_config() == StackConfig(moved.resolve(), (REPO / "state").resolve(), 42.0, True)
        rec = run_program(lambda: runpy.run_path(str(REPO / "iac/__main__.py"), run_name="__main__") and None)
    finally:
        pulumi_config.set_all_config({})
    m = rec.of_type(MEMBERSHIP)["nid005"].inputs
    assert (m["vcluster"], m["state_dir"], m["timeout"], m["force"]) == ("eiger", str(REPO / "state"), 42.0, True)


def test_relative_paths_are_taken_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "iac")  # wherever Pulumi starts the program, Pulumi.yaml marks the root
    cfg = resolve_config("sites/local.yaml", None)
    assert cfg.site_path == LOCAL and cfg.move_timeout == 600.0 and cfg.force is False
    with pytest.raises(ValueError, match="moveTimeout"):
        resolve_config("sites/local.yaml", None, move_timeout=0)


def test_provider_travels_to_another_process_as_plain_data():
    """Pulumi pickles the provider into its own process: it must arrive by reference and import light."""
    from pulumi.dynamic.dynamic import serialize_provider

    blob = serialize_provider(NodeMembershipProvider())
    code = (
        "import base64, sys, dill\n"
        f"p = dill.loads(base64.b64decode({blob!r}))\n"
        "assert not {'iac.ops', 'iac.moves', 'services.slurm.control'} & set(sys.modules), 'heavy import at load'\n"
        "d = p.diff('s/n', {'node': 'n', 'vcluster': 'a'}, {'node': 'n', 'vcluster': 'b'})\n"
        "print(type(p).__module__, d.changes, d.replaces)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["iac.pulumi_provider", "True", "[]"]
    assert len(blob) < 400  # the class by reference, no captured state


def test_invalid_site_file_stops_the_program_with_the_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(LOCAL.read_text().replace("driver: local", "drivr: local"))
    with pytest.raises(pulumi.RunError, match=r"unknown key 'drivr'; did you mean 'driver'"):
        build_site(resolve_config(str(bad), str(tmp_path)))
