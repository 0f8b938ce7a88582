"""Imports point down: the vocabulary imports nothing of ours, services and user_envs never import iac,
workloads import no control plane (they run inside containers on nodes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"vocab", "iac", "services", "user_envs", "workloads", "strata"}
MAY_NOT = {
    "vocab": OURS - {"vocab"},
    "services": {"iac", "user_envs", "workloads", "strata"},
    "user_envs": {"iac", "workloads", "strata"},
    "workloads": {"iac", "services", "user_envs", "strata"},
}


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports, wherever in the module (also inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("layer", sorted(MAY_NOT))
def test_imports_point_down(layer):
    bad = {}
    for path in sorted((REPO / layer).rglob("*.py")):
        wrong = imported(path) & MAY_NOT[layer]
        if wrong:
            bad[str(path.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"{layer} may not import {sorted(MAY_NOT[layer])}: {bad}"
