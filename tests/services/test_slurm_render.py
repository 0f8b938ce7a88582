"""Rendered Slurm configs compared as whole files against golden copies (STRATA_UPDATE_GOLDEN=1 rewrites)."""

import os
import socket
from pathlib import Path

import pytest

from vocab.layout import Layout
from vocab.site import load_site
from iac.slurm_inputs import slurm_cluster
from services.slurm.render import conf_members, render_gres_conf, render_slurm_conf

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[2]


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("STRATA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden copy (STRATA_UPDATE_GOLDEN=1 to accept)"


@pytest.fixture
def local_site(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-host")
    site = load_site(REPO / "sites/local.yaml")
    return site, Layout.of(site, Path("/var/lib/strata"))


@pytest.mark.parametrize(
    "vcluster,members",
    [("clariden", [f"nid{i:03d}" for i in range(1, 7)]), ("bristen", ["nid007", "nid008"]), ("eiger", [])],
)
def test_local_site_configs_match_golden(local_site, vcluster, members):
    site, layout = local_site
    c = slurm_cluster(site, layout, vcluster, members)
    c = c.__class__(**{**c.__dict__, "source": "sites/local.yaml"})
    check_golden(f"{vcluster}.slurm.conf", render_slurm_conf(c))
    check_golden(f"{vcluster}.gres.conf", render_gres_conf(c))


def test_render_is_stable_whatever_the_member_order(local_site):
    site, layout = local_site
    a = render_slurm_conf(slurm_cluster(site, layout, "clariden", ["nid003", "nid001", "nid002"]))
    b = render_slurm_conf(slurm_cluster(site, layout, "clariden", ["nid001", "nid002", "nid003"]))
    assert a == b


def test_members_read_back_from_rendered_conf(local_site):
    site, layout = local_site
    text = render_slurm_conf(slurm_cluster(site, layout, "clariden", ["nid002", "nid005"]))
    assert conf_members(text) == ["nid002", "nid005"]
    assert "PartitionName=normal Nodes=nid[002,005] Default=YES" in text


def test_partition_span_is_cut_to_members(local_site, tmp_path):
    import yaml

    data = yaml.safe_load((REPO / "sites/local.yaml").read_text())
    data["platforms"]["ml"]["vclusters"]["clariden"]["partitions"][1]["nodes"] = "nid[005-006]"
    from vocab.site import parse_site

    site = parse_site(data, "x.yaml")
    text = render_slurm_conf(slurm_cluster(site, Layout.of(site, tmp_path), "clariden", ["nid001", "nid005"]))
    assert "PartitionName=debug Nodes=nid005 " in text
