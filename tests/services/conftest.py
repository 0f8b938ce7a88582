"""Fixtures of the service-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from iac.drivers.local import reboot
from vocab.site import load_site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path) -> Path:
    """nid001's node root, booted by the local driver into clariden (emulated /proc, /sys, GPUs)."""
    site = load_site(REPO / "sites/local.yaml")
    r = tmp_path / "nid001" / "root"
    r.parent.mkdir()
    reboot(site.nodes["nid001"], r, "clariden", "img")
    return r
