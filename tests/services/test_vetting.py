"""Vetting profiles are validated strictly; checks measure and compare; the report names failing nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.vetting import checks
from services.vetting.checks import Result
from services.vetting.profile import DiskWrite, EnvVars, Matmul, PerDevice, ProfileError, load_profile, parse_profile
from services.vetting.vet import report, run_checks


def test_bundled_llm_profile_loads():
    p = load_profile("llm")
    assert [c.check for c in p.checks] == ["gpu_memory_free", "matmul", "allreduce", "disk_write", "env"]


@pytest.mark.parametrize("data,message", [
    ({"checks": [{"check": "matmull", "min_tflops": {"cuda": 1, "cpu": 1}}]},
     "checks.0: unknown check 'matmull'; did you mean `matmul`?"),
    ({"checks": [{"check": "matmul", "min_tflop": {"cuda": 1, "cpu": 1}}]}, "did you mean `min_tflops`?"),
    ({"checks": [{"check": "disk_write", "min_mbps": 1, "sise_mb": 4}]}, "checks.0.sise_mb: unknown key; did you mean `size_mb`?"),
    ({"check": []}, "check: unknown key; did you mean `checks`?"),
    ({"checks": []}, "checks: Tuple should have at least 1 item"),
    ({"checks": [{"check": "gpu_memory_free", "min_free": 1.5}]}, "checks.0.min_free: Input should be less than or equal to 1"),
])
def test_bad_profiles_are_refused_naming_the_key_and_a_fix(data, message):
    with pytest.raises(ProfileError, match="invalid vetting profile") as e:
        parse_profile(data, "p.yaml")
    assert message in str(e.value) and str(e.value).startswith("p.yaml:")


@pytest.mark.parametrize("text,where,problem", [
    ("checks:\n  - {check: matmul\n", ":3:1:", "expected ',' or '}', but got '<stream end>' (while parsing a flow "
     "mapping from line 2, column 5)"),
    ("checks:\n\t- {check: env}\n", ":2:1:", "found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_is_one_line_with_file_line_column_and_a_fix(tmp_path, capsys, text, where, problem):
    from services.vetting.vet import main

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile(str(path))
    assert str(e.value).startswith(f"{path}{where} not valid YAML: {problem}") and "\n" not in str(e.value)
    assert "fix the syntax there" in str(e.value)
    assert main(["--profile", str(path)]) == 2  # `python -m services.vetting`, as the prolog runs it
    out = capsys.readouterr().err
    assert out.startswith(f"error: {path}{where}") and out.count("\n") == 1 and "Traceback" not in out


def test_strata_vet_with_a_broken_profile_exits_2_with_the_line(tmp_path):
    from typer.testing import CliRunner

    from strata.cli import app

    path = tmp_path / "mine.yaml"
    path.write_text("checks:\n  - {check: matmul\n")
    r = CliRunner().invoke(app, ["vet", "--profile", str(path)])
    assert r.exit_code == 2 and f"{path}:3:1: not valid YAML" in r.output, r.output


def test_a_profile_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProfileError, match=f"{path}: cannot read it"):
        load_profile(str(path))


def test_unknown_profile_name_lists_the_bundled_ones():
    with pytest.raises(ProfileError, match="bundled: llm"):
        load_profile("llama")


def test_emulated_slow_node_fails_matmul_and_a_normal_one_passes(tmp_path):
    c = Matmul(check="matmul", size=128, iters=2, min_tflops=PerDevice(cuda=1, cpu=1e-6))
    assert checks.matmul(c, "nid001", tmp_path).ok
    (tmp_path / "run/strata").mkdir(parents=True)
    (tmp_path / checks.PERF).write_text(json.dumps({"matmul": 1e-9}))
    slow = checks.matmul(c, "nid002", tmp_path)
    assert not slow.ok and slow.unit == "TFLOP/s" and slow.value < 1e-6


def test_disk_write_measures_in_the_node_root_and_cleans_up(tmp_path):
    (tmp_path / "tmp").mkdir()
    r = checks.disk_write(DiskWrite(check="disk_write", size_mb=2, min_mbps=1e9), "nid001", tmp_path)
    assert not r.ok and r.value > 0 and list((tmp_path / "tmp").iterdir()) == []


def test_a_check_that_errors_fails_with_the_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    from services.vetting.profile import Profile

    p = Profile(checks=(DiskWrite(check="disk_write", path="missing", min_mbps=1),
                        EnvVars(check="env", required=("NOT_SET_ANYWHERE",))))
    results = run_checks(p, "nid003", tmp_path)
    assert [r.ok for r in results] == [False, False]
    assert results[0].detail.startswith("error: FileNotFoundError") and results[1].detail == "missing NOT_SET_ANYWHERE"


def test_report_names_failing_nodes_first():
    ok, text = report([Result("nid001", "matmul", True, 0.1, 0.01, "TFLOP/s"),
                       Result("nid002", "matmul", False, 0.001, 0.01, "TFLOP/s")])
    assert not ok
    assert text.splitlines()[:2] == ["vet FAILED on 1 node(s): nid002", "  FAIL nid002 matmul: 0.001 TFLOP/s < 0.01"]
    assert report([Result("nid001", "env", True, None, None, detail="2 variables set")])[0]
