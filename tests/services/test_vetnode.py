"""The prolog part `vetnode`: with -C vetnode, the llm profile's node-local checks in a subprocess, 10 s at most."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from services.prolog import runner, tuning
from services.vetting import checks
from services.vetting.profile import load_profile
from services.vetting.vet import node_local

REPO = Path(__file__).resolve().parents[2]
PART = REPO / "services/prolog/parts/prolog.d/50-vetnode.py"


def ctx(root: Path, constraints: str) -> runner.Context:
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7"}
    return runner.Context("prolog", root, "nid001", "7", constraints, env)


def load_part():
    spec = importlib.util.spec_from_file_location("vetnode_part", PART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("constraints,asked", [
    ("vetnode", True), ("thp_never&vetnode", True), ("[vetnode|gh200]*2", True),
    ("", False), ("thp_never", False), ("vetnodes&thp_vetnode", False),  # only whole feature names count
])
def test_vetnode_is_read_with_the_thp_vboost_parser(constraints, asked):
    assert (tuning.VETNODE_FEATURE in tuning.features(constraints)) is asked


def test_node_local_checks_are_the_llm_profile_without_the_tasks_ones():
    assert [c.check for c in node_local(load_profile("llm")).checks] == ["gpu_memory_free", "matmul", "disk_write"]


def test_without_the_constraint_the_part_starts_nothing(root, monkeypatch):
    def no_subprocess(*a, **k):
        raise AssertionError("started a subprocess")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    r = runner.run_part(PART, ctx(root, "thp_never&nvidia_vboost_enabled"))
    assert r.ok and r.name == "vetnode" and r.detail == "skipped: not asked" and r.ms < 100


def test_a_normal_node_passes(root):
    r = runner.run_part(PART, ctx(root, "thp_never&vetnode"))
    assert r.ok and r.detail == "llm profile, node-local checks passed", r


def test_a_slow_node_fails_naming_the_check_and_figure_in_the_drain_reason(root):
    (root / checks.PERF).parent.mkdir(parents=True, exist_ok=True)
    (root / checks.PERF).write_text(json.dumps({"matmul": 1e-6}))  # emulated: a million times slower
    r = runner.run_part(PART, ctx(root, "vetnode"))
    assert not r.ok and r.detail.startswith("matmul: ") and " TFLOP/s < 0.001 (cpu)" in r.detail, r
    assert runner.drain_reason("prolog", [r]) == f"strata: prolog vetnode: {r.detail}"


def test_a_vetting_that_overruns_fails_with_the_timeout(root, monkeypatch):
    part = load_part()
    monkeypatch.setattr(part, "TIMEOUT", 0.05)  # less than the interpreter start
    with pytest.raises(runner.PartFailed, match=r"^timed out after 0.05 s$"):
        part.run(ctx(root, "vetnode"))
