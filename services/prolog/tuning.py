"""THP and vBoost as Slurm features: what the job's constraints ask for, and the node's defaults to reset to.

Features (declared per node in slurm.conf): `thp_always` (default), `thp_madvise`, `thp_never`;
`nvidia_vboost_enabled`, `nvidia_vboost_disabled` (only on nodes whose GPUs support vBoost); `vetnode` (the
prolog vets the node first: part `vetnode`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from vocab.names import THP_MODES

THP_FEATURES = tuple(f"thp_{m}" for m in THP_MODES)
VBOOST_FEATURES = ("nvidia_vboost_enabled", "nvidia_vboost_disabled")
VETNODE_FEATURE = "vetnode"
THP_ENABLED = "sys/kernel/mm/transparent_hugepage/enabled"
NODE_DEFAULTS = "etc/strata/tuning.json"  # written by the node_tuning role


@dataclass(frozen=True)
class Wanted:
    """Settings a job asked for; None = not asked (the node's default applies)."""

    thp: str | None = None
    vboost: bool | None = None


def features(constraints: str) -> list[str]:
    """The feature names in SLURM_JOB_CONSTRAINTS (`thp_never&nvidia_vboost_enabled`, `[a|b]`, `a*2`…), in order."""
    return re.findall(r"[A-Za-z0-9_.-]+", constraints or "")


def wanted(constraints: str) -> Wanted:
    """Read our THP and vBoost features out of SLURM_JOB_CONSTRAINTS.

    The first THP feature named wins: with `thp_never|thp_madvise` Slurm does not say which one it matched,
    and every node offers all three.
    """
    words = features(constraints)
    thp = next((w.removeprefix("thp_") for w in words if w in THP_FEATURES), None)
    vb = next((w == "nvidia_vboost_enabled" for w in words if w in VBOOST_FEATURES), None)
    return Wanted(thp, vb)


def format_thp(mode: str) -> str:
    """The kernel's view of a mode: `always [madvise] never`."""
    assert mode in THP_MODES, mode
    return " ".join(f"[{m}]" if m == mode else m for m in THP_MODES)


def parse_thp(text: str) -> str:
    """The selected mode of a THP `enabled` file."""
    m = re.search(r"\[(\w+)\]", text)
    if not m or m.group(1) not in THP_MODES:
        raise ValueError(f"not a THP setting: {text.strip()!r}")
    return m.group(1)


def node_defaults(root: Path) -> Wanted:
    """The node's defaults (node_tuning role's file), else THP always and vBoost off."""
    try:
        d = json.loads((root / NODE_DEFAULTS).read_text())
    except (FileNotFoundError, ValueError):
        d = {}
    return Wanted(d.get("thp", "always"), bool(d.get("vboost", False)))


def set_thp(root: Path, mode: str, emulated: bool) -> str:
    """Select a THP mode. The kernel takes the bare word; the emulated file holds what the kernel would show."""
    path = root / THP_ENABLED
    if not path.exists():
        return "thp: not supported here"
    path.write_text((format_thp(mode) if emulated else mode) + "\n")
    if parse_thp(path.read_text()) != mode:
        raise RuntimeError(f"THP still not {mode}: {path.read_text().strip()}")
    return f"thp {mode}"
