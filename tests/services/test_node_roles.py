"""The prolog and node_tuning roles, run through ansible-runner against an emulated node root."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from services.ansible import runner as ansible

ROLES = Path(ansible.ROLES)


@pytest.fixture
def playbooks(tmp_path, monkeypatch):
    """A playbook applying both roles (the lead wires them into the node playbook)."""
    d = tmp_path / "playbooks"
    d.mkdir()
    (d / "node_services.yml").write_text(
        "- name: Node services\n  hosts: all\n  gather_facts: false\n  roles: [prolog, node_tuning]\n")
    monkeypatch.setattr(ansible, "PLAYBOOKS", d)
    return d


def load_tuning():
    spec = importlib.util.spec_from_file_location("node_tuning", ROLES / "node_tuning/files/node_tuning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_roles_install_parts_and_tuning_into_the_node_root_and_rerun_changes_nothing(tmp_path, playbooks):
    roots = {n: tmp_path / n / "root" for n in ("nid001", "nid002")}
    hosts = {n: {"strata_node_root": str(r), "strata_python": sys.executable} for n, r in roots.items()}
    hosts["nid002"]["node_tuning_thp_default"] = "madvise"
    first = ansible.run_playbook("node_services", hosts, tmp_path / "ansible", "t")
    assert first.changed == {"nid001": 2, "nid002": 2}
    r = roots["nid001"]
    assert sorted(p.name for p in (r / "etc/strata/prolog.d").iterdir()) == [
        ".strata-managed", "10-cache-flush.py", "20-gpu-memory.py", "30-thp-vboost.py", "40-job-cache.py",
        "50-vetnode.py"]
    assert (r / "etc/modprobe.d/strata-nvidia-uvm.conf").read_text().endswith(
        "options nvidia_uvm uvm_perf_access_counter_migration_enable=0\n")
    assert "NUMAMask=0-3" in (r / "etc/systemd/system.conf.d/strata-numa.conf").read_text()
    assert "mpol=bind:0-3" in (r / "etc/systemd/system/tmp.mount.d/strata-numa.conf").read_text()
    assert (r / "etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service").is_symlink()
    assert json.loads((r / "etc/strata/tuning.json").read_text())["thp"] == "always"
    assert json.loads((roots["nid002"] / "etc/strata/tuning.json").read_text())["thp"] == "madvise"
    # idempotent: a second run reports no change
    assert ansible.run_playbook("node_services", hosts, tmp_path / "ansible", "t2").changed == {}


def test_the_epilog_resets_thp_to_the_tuned_default(tmp_path):
    from services.prolog.tuning import node_defaults

    tuning = load_tuning()
    s = {"access_counter_migration": True, "cpu_numa_nodes": "0-3", "thp_default": "never",
         "vboost_default": False, "gpu_persistence": False}
    files = tuning.render(s)
    assert files["etc/modprobe.d/strata-nvidia-uvm.conf"] is None  # migration left on: no option file
    tuning.apply(tmp_path, files)
    assert node_defaults(tmp_path).thp == "never"
    assert not (tmp_path / tuning.PERSISTENCED).exists()


@pytest.mark.parametrize("key,value,message", [
    ("thp_default", "sometimes", "node_tuning_thp_default must be one of"),
    ("cpu_numa_nodes", "all", "node_tuning_cpu_numa_nodes must be a NUMA node list"),
])
def test_bad_tuning_values_are_refused_with_the_knob_named(key, value, message):
    tuning = load_tuning()
    s = {"access_counter_migration": False, "cpu_numa_nodes": "0-3", "thp_default": "always",
         "vboost_default": False, "gpu_persistence": True, key: value}
    with pytest.raises(ValueError, match=message):
        tuning.render(s)


def test_install_keeps_a_sites_own_parts_and_drops_parts_we_no_longer_ship(tmp_path):
    from services.prolog.install import install

    packaged = tmp_path / "pkg"
    (packaged / "prolog.d").mkdir(parents=True)
    (packaged / "epilog.d").mkdir()
    (packaged / "prolog.d/10-a.py").write_text("A")
    (packaged / "prolog.d/20-b.py").write_text("B")
    root = tmp_path / "root"
    assert install(root, packaged)
    site_part = root / "etc/strata/prolog.d/50-site"
    site_part.write_text("#!/bin/sh\n")
    (packaged / "prolog.d/20-b.py").unlink()
    assert install(root, packaged)
    assert sorted(p.name for p in (root / "etc/strata/prolog.d").iterdir()) == [".strata-managed", "10-a.py", "50-site"]
    assert not install(root, packaged)


def test_the_node_side_tuning_script_knows_the_same_thp_modes_as_strata():
    import importlib.util

    from vocab.names import THP_MODES

    path = Path(__file__).resolve().parents[2] / "services/ansible/roles/node_tuning/files/node_tuning.py"
    spec = importlib.util.spec_from_file_location("node_tuning_file", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.THP_MODES == THP_MODES
