"""Which interpreter the SPANK plugin execs for a job's user, and the warning when other users cannot run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from vocab.site import SiteError, load_site
from user_envs.install import closed_to_users, engine_python

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def open_dir():
    """A directory every user can search (pytest's tmp_path lies below a 0700 dir)."""
    d = Path(tempfile.mkdtemp(dir="/tmp", prefix="strata-py-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def make(path: Path, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_closed_to_users_follows_links_and_checks_every_directory(open_dir):
    (open_dir / "bin").mkdir(mode=0o755)
    ok = make(open_dir / "bin" / "py", 0o755)
    assert closed_to_users(str(ok)) is None
    (open_dir / "root").mkdir(mode=0o700)
    hidden = make(open_dir / "root" / "py", 0o755)
    assert closed_to_users(str(hidden)) == f"{open_dir / 'root'} is not searchable by other users (mode 700)"
    (open_dir / "bin" / "link").symlink_to("../root/py")  # a venv's python: a link into a private dir
    assert "root is not searchable by other users" in closed_to_users(str(open_dir / "bin" / "link"))
    no_x = make(open_dir / "bin" / "rw", 0o744)
    assert closed_to_users(str(no_x)).endswith("is not executable by other users (mode 744)")
    assert "No such file or directory" in closed_to_users(str(open_dir / "bin" / "missing"))


def site_with_python(tmp_path: Path, python: str | None) -> Path:
    data = yaml.safe_load((REPO / "sites" / "local.yaml").read_text())
    if python is not None:
        data["platforms"]["ml"]["vclusters"]["clariden"]["container_engine"] = {"python": python}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_engine_python_is_the_sites_choice_else_the_installing_python(tmp_path):
    assert engine_python(load_site(site_with_python(tmp_path, "/opt/strata/bin/python")), "clariden") == \
        "/opt/strata/bin/python"
    assert engine_python(load_site(site_with_python(tmp_path, None)), "clariden") == sys.executable
    with pytest.raises(SiteError, match="container_engine.python"):
        load_site(site_with_python(tmp_path, "bin/python"))  # relative: refused


def vservices(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "strata.cli", "vservices", "clariden", "--site", str(site)],
                          capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "STRATA_STATE": "/srv/st"})


def test_vservices_warns_when_other_users_cannot_run_the_engines_python(tmp_path, open_dir):
    (open_dir / "private").mkdir(mode=0o700)
    r = vservices(site_with_python(tmp_path, str(make(open_dir / "private" / "python", 0o755))))
    assert r.returncode == 0 and "container-engine" in r.stdout
    assert "warning:" in r.stderr and "works for root only" in r.stderr, r.stderr
    assert "platforms.ml.vclusters.clariden.container_engine.python" in r.stderr.replace("\n", "")
    (open_dir / "bin").mkdir(mode=0o755)
    r = vservices(site_with_python(tmp_path, str(make(open_dir / "bin" / "python", 0o755))))
    assert r.returncode == 0 and r.stderr == "", r.stderr
