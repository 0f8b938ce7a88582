"""`strata train` refuses, before writing or submitting, a job its vCluster or partition can never start."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vocab.site import load_site
from iac.slurm_inputs import slurm_cluster
from vocab.layout import Layout
from services.slurm.render import render_slurm_conf
from strata.cli import app
from strata.train_checks import TrainRequestError, capacity_of, check_nodes

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "sites" / "local.yaml"


def site_with_debug_on(tmp_path: Path, nodes: str) -> Path:
    """The local site with clariden's debug partition narrowed to `nodes`."""
    data = yaml.safe_load(LOCAL.read_text())
    clariden = data["platforms"]["ml"]["vclusters"]["clariden"]
    clariden["partitions"] = [{"name": "normal", "default": True}, {"name": "debug", "nodes": nodes}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def render_conf(site_path: Path, state: Path, vcluster: str, members: list[str]) -> Path:
    """Write the slurm.conf the running site would have for `members` (what Slurm sees)."""
    site = load_site(str(site_path))
    layout = Layout.of(site, state)
    conf = layout.slurm_conf(vcluster)
    conf.parent.mkdir(parents=True)
    conf.write_text(render_slurm_conf(slurm_cluster(site, layout, vcluster, members)))
    return conf


def train(tmp_path, monkeypatch, *args: str):
    monkeypatch.setenv("STRATA_STATE", str(tmp_path / "state"))
    return CliRunner().invoke(app, ["train", *args])


def test_more_nodes_than_the_vcluster_has_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    r = train(tmp_path, monkeypatch, "--vcluster", "bristen", "--nodes", "5", "--site", str(LOCAL))
    assert r.exit_code == 2, r.output
    assert (f"--nodes 5: vCluster bristen has 2 node(s) (nid[007-008]), as {LOCAL} says; the job would pend "
            "forever. Use --nodes 2 or fewer") in " ".join(r.output.split()), r.output
    assert not (tmp_path / "state").exists()  # no run dir, no job script


def test_the_running_sites_slurm_conf_is_what_counts(tmp_path):
    """Mid-move, the site file may already list a node that Slurm does not have yet."""
    site = load_site(str(LOCAL))
    conf = render_conf(LOCAL, tmp_path, "bristen", ["nid006", "nid007", "nid008"])
    cap = capacity_of(site, "bristen", conf)
    assert cap.members == ("nid006", "nid007", "nid008") and cap.source == str(conf)
    assert cap.partitions == {"normal": cap.members} and cap.default == "normal"
    check_nodes(cap, "bristen", 3, None, str(LOCAL))
    with pytest.raises(TrainRequestError, match=rf"bristen has 3 node\(s\) \(nid\[006-008\]\), as {conf} says"):
        check_nodes(cap, "bristen", 4, None, str(LOCAL))


def test_more_nodes_than_the_partition_has_is_refused_naming_one_that_fits(tmp_path):
    site_path = site_with_debug_on(tmp_path, "nid[001-002]")
    site = load_site(str(site_path))
    conf = render_conf(site_path, tmp_path, "clariden", site.members("clariden"))
    for cap in (capacity_of(site, "clariden", conf), capacity_of(site, "clariden", tmp_path / "none")):
        check_nodes(cap, "clariden", 2, "debug", str(site_path))
        with pytest.raises(TrainRequestError) as e:
            check_nodes(cap, "clariden", 3, "debug", str(site_path))
        assert str(e.value) == (f"--nodes 3: partition debug of clariden has 2 node(s) (nid[001-002]), as "
                                f"{cap.source} says; the job would pend forever. Use --nodes 2 or fewer or "
                                "another --partition: normal (6 nodes)")


def test_an_unknown_partition_and_an_empty_vcluster_are_refused(tmp_path, monkeypatch):
    r = train(tmp_path, monkeypatch, "--vcluster", "clariden", "-p", "gpu", "--site", str(LOCAL))
    assert r.exit_code == 2 and "--partition gpu: vCluster clariden has no such partition (known: normal, debug" \
        in " ".join(r.output.split()), r.output
    r = train(tmp_path, monkeypatch, "--vcluster", "eiger", "--site", str(LOCAL))
    assert r.exit_code == 2 and "vCluster eiger has no nodes" in r.output, r.output
    assert not (tmp_path / "state").exists()


def test_a_vcluster_that_is_not_up_fails_at_once_without_writing(tmp_path, monkeypatch):
    r = train(tmp_path, monkeypatch, "--vcluster", "bristen", "--nodes", "2", "--site", str(LOCAL))
    assert r.exit_code == 1 and "vCluster bristen is not up" in r.output and "strata up" in r.output, r.output
    assert not (tmp_path / "state").exists()
