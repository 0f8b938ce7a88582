"""`strata train --environment`: where the run dir appears inside the EDF's container."""

from pathlib import Path

from strata.train import container_path
from user_envs.edf import Mount


def test_the_deepest_writable_mount_holding_the_run_dir_wins(tmp_path):
    scratch, runs = tmp_path / "scratch", tmp_path / "scratch" / "runs"
    mounts = [Mount(str(scratch), "/scratch"), Mount(str(runs), "/runs"), Mount("/usr/lib", "/usr/lib", ("ro",))]
    assert container_path(mounts, runs / "tiny") == "/runs/tiny"
    assert container_path(mounts, runs) == "/runs"
    assert container_path(mounts, scratch / "other") == "/scratch/other"


def test_a_read_only_or_missing_mount_gives_none(tmp_path):
    mounts = [Mount(str(tmp_path / "data"), "/data", ("ro",))]
    assert container_path(mounts, tmp_path / "data" / "run") is None
    assert container_path(mounts, Path("/elsewhere/run")) is None
    assert container_path([], tmp_path) is None
