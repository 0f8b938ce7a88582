"""The `strata` command as a new user meets it: found from anywhere, options in either place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def strata(*args: str, cwd: Path, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "STRATA_STATE": str(state), "PYTHONPATH": str(REPO)})


def test_the_embedded_site_is_found_from_any_directory(tmp_path):
    r = strata("plan", cwd=Path("/"), state=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "move    nid001: free pool -> clariden"
    assert list(tmp_path.iterdir()) == []  # a plan writes nothing


def test_global_options_work_before_the_command_as_after_it(tmp_path):
    site = tmp_path / "mine.yaml"
    site.write_text((REPO / "sites/local.yaml").read_text().replace("site: local", "site: mine"))
    state = tmp_path / "state"
    before, after = strata("--site", str(site), "plan", cwd=tmp_path, state=state), \
        strata("plan", "--site", str(site), cwd=tmp_path, state=state)
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout
    env = [strata(*args, cwd=tmp_path, state=state) for args in (
        ("env", "--site", str(site), "bristen"), ("env", "bristen", "--site", str(site)),
        ("--site", str(site), "env", "bristen"))]
    assert {r.stdout for r in env} == {f"export SLURM_CONF={state}/mine/vclusters/bristen/etc/slurm.conf\n"}


def test_a_vcluster_named_like_a_subcommand_is_not_ambiguous(tmp_path):
    site = tmp_path / "s.yaml"
    site.write_text((REPO / "sites/local.yaml").read_text().replace("bristen", "show"))
    r = strata("env", "show", "--site", str(site), cwd=tmp_path, state=tmp_path)
    assert r.stdout == f"export SLURM_CONF={tmp_path}/local/vclusters/show/etc/slurm.conf\n", r.stderr
    assert "show" in strata("edf", "--help", cwd=tmp_path, state=tmp_path).stdout
