"""`strata edf show`, `strata env VCLUSTER` and `strata vservices`, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def strata(*args: str, **env) -> subprocess.CompletedProcess:
    # user_envs.cli = the strata command with the user-environment commands mounted
    return subprocess.run([sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "STRATA_STATE": "/srv/st", **env})


def test_edf_show_prints_the_resolved_edf(tmp_path):
    (tmp_path / "base.toml").write_text('image = "/img/base.sqsh"\n[env]\nA = "1"\n')
    (tmp_path / "app.toml").write_text('base_environment = "base"\nworkdir = "/home/${USER}"\n'
                                       '[annotations.com.hooks.cxi]\nenabled = "true"\n')
    r = strata("edf", "show", "app", EDF_PATH=str(tmp_path), USER="bob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1:] == [
        'image = "/img/base.sqsh"', 'workdir = "/home/bob"', "entrypoint = false", "writable = true", "mounts = []",
        "", "[env]", 'A = "1"', "", "[annotations]", '"com.hooks.cxi.enabled" = "true"']


def test_edf_show_errors_name_file_key_and_fix_and_exit_2(tmp_path):
    (tmp_path / "bad.toml").write_text('image = "/x"\nmounts = ["/a:/b:ro,private"]\n')
    r = strata("edf", "show", "bad", EDF_PATH=str(tmp_path))
    assert r.returncode == 2 and "bad.toml: mounts:" in r.stderr and "join flags with '+'" in r.stderr
    assert "Traceback" not in r.stderr


def test_env_vcluster_prints_slurm_conf():
    r = strata("env", "clariden")
    assert r.returncode == 0 and r.stdout == "export SLURM_CONF=/srv/st/local/vclusters/clariden/etc/slurm.conf\n"


def test_vservices_lists_what_a_vcluster_offers():
    r = strata("vservices", "clariden")
    assert r.returncode == 0
    assert r.stdout.splitlines()[0] == "vCluster clariden offers:"
    assert "slurm             export SLURM_CONF=/srv/st/local/vclusters/clariden/etc/slurm.conf" in r.stdout
    assert "container-engine  " in r.stdout and "srun --environment=NAME" in r.stdout
    assert strata("vservices", "nope").returncode == 2
