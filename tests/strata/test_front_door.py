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
