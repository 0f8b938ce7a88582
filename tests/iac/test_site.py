"""The site file: valid files load; every kind of bad input names the file, the key path and a fix."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vocab.site import SiteError, load_site, parse_site

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "sites/local.yaml"


@pytest.fixture
def data():
    return yaml.safe_load(LOCAL.read_text())


def errors(d) -> str:
    with pytest.raises(SiteError) as e:
        parse_site(d, "sites/x.yaml")
    return str(e.value)


def test_local_site_loads_with_expected_shape():
    s = load_site(LOCAL)
    assert list(s.nodes) == [f"nid{i:03d}" for i in range(1, 9)]
    assert s.members("clariden") == [f"nid{i:03d}" for i in range(1, 7)]
    assert s.members("bristen") == ["nid007", "nid008"]
    assert s.members("eiger") == []
    assert s.platform_of == {"clariden": "ml", "bristen": "ml", "eiger": "hpc"}
    assert s.nodes["nid003"].hardware.gpus.count == 4
    assert s.nodes["nid003"].hardware.gpus.memory_gib == 96


def test_nodes_in_no_vcluster_are_the_free_pool(data):
    data["platforms"]["ml"]["vclusters"]["bristen"]["nodes"] = "nid007"
    s = parse_site(data, "x.yaml")
    assert s.desired["nid008"] is None


def test_unknown_key_suggests_the_right_one(data):
    data["platforms"]["ml"]["vclusters"]["clariden"]["nodez"] = "nid001"
    msg = errors(data)
    assert "sites/x.yaml: platforms.ml.vclusters.clariden.nodez: unknown key 'nodez'; did you mean 'nodes'?" in msg


def test_unknown_nested_key_suggests_from_its_own_model(data):
    data["nodes"][0]["hardware"]["gpus"]["cont"] = 4
    assert "nodes[0].hardware.gpus.cont: unknown key 'cont'; did you mean 'count'?" in errors(data)


def test_bad_hostlist_is_named_with_a_fix(data):
    data["platforms"]["ml"]["vclusters"]["bristen"]["nodes"] = "nid[007-0x8]"
    msg = errors(data)
    assert "platforms.ml.vclusters.bristen.nodes" in msg and "not a valid hostlist" in msg
    assert "nid[001-006]" in msg  # the fix shows the syntax


def test_duplicate_node_across_groups(data):
    data["nodes"].append(copy.deepcopy(data["nodes"][0]))
    data["nodes"][1]["names"] = "nid[008-009]"
    assert "nodes[1].names: node nid008 is already listed in nodes[0].names" in errors(data)


def test_node_in_two_vclusters(data):
    data["platforms"]["ml"]["vclusters"]["bristen"]["nodes"] = "nid[006-008]"
    assert "node nid006 is also in vCluster clariden" in errors(data)


def test_vcluster_naming_unknown_node(data):
    data["platforms"]["hpc"]["vclusters"]["eiger"]["nodes"] = "nid[020-021]"
    assert "platforms.hpc.vclusters.eiger.nodes: nid[020-021] not listed under nodes:" in errors(data)


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("cpus", 0, "nodes[0].hardware.cpus"),
        ("memory_gib", -1, "nodes[0].hardware.memory_gib"),
        ("arch", "sparc", "nodes[0].hardware.arch"),
    ],
)
def test_bad_hardware_values(data, key, value, expect):
    data["nodes"][0]["hardware"][key] = value
    msg = errors(data)
    assert expect in msg and "fix the value" in msg


def test_gpu_count_out_of_range(data):
    data["nodes"][0]["hardware"]["gpus"]["count"] = 99
    assert "nodes[0].hardware.gpus.count" in errors(data)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SiteError, match="file not found"):
        load_site(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: x\nnodes: [\n")
    with pytest.raises(SiteError, match=r"bad.yaml: line \d+, column \d+: not valid YAML"):
        load_site(bad)


def test_cli_exits_2_and_names_the_key_without_traceback(tmp_path, data):
    data["platforms"]["ml"]["vclusters"]["clariden"]["imgae"] = "x"
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(data))
    r = subprocess.run(
        [sys.executable, "-m", "strata.cli", "plan", "--site", str(bad)],
        capture_output=True, text=True, env={"STRATA_STATE": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert "platforms.ml.vclusters.clariden.imgae: unknown key 'imgae'; did you mean 'image'?" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()  # bad input changes nothing


def test_a_vcluster_may_not_be_named_like_the_free_pool(data):
    data["platforms"]["hpc"]["vclusters"]["free"] = {"nodes": ""}
    assert "platforms.hpc.vclusters.free: 'free' names the free pool" in errors(data)
