"""Faults during moves: one clear line naming what failed and what to do, never a traceback; a re-run
finishes once the cause is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import SiteUnderTest, require_slurm

pytestmark = pytest.mark.e2e


def pid_of(path: Path) -> int:
    return int(path.read_text().split()[0])


def assert_one_clear_error(r: subprocess.CompletedProcess, *phrases: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    for p in phrases:
        assert p in r.stderr, r.stderr


def assert_journal_readable(site) -> None:
    lines = (site.root / "journal.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if line.strip()]
    assert recs and all({"step", "event", "ts"} <= set(r) for r in recs)


def journal_has(site, step: str, event: str, node: str) -> bool:
    j = site.root / "journal.jsonl"
    if not j.exists():
        return False
    return any(r.get("step") == step and r.get("event") == event and r.get("node") == node
               for r in map(json.loads, j.read_text().splitlines()))


def apply_waiting_on(site, node: str) -> subprocess.Popen:
    """`strata apply` in the background, returned once it waits for the jobs on `node`."""
    apply = subprocess.Popen([sys.executable, "-m", "strata.cli", "apply", "--site", str(site.file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=site.env())
    end = time.monotonic() + 60
    while not journal_has(site, "wait", "start", node) and time.monotonic() < end:
        time.sleep(0.05)
    return apply


def test_source_controller_dying_while_a_move_waits_is_named_with_the_fix(site):
    job = site.sbatch("alpha", "nid002", "sleep 60")
    site.wait_job("alpha", job, ("RUNNING",))
    site.set_owner("nid002", "beta")
    apply = apply_waiting_on(site, "nid002")
    # SIGTERM: the controller saves its state as it stops (a SIGKILL can lose a job Slurm saved a moment late,
    # which is Slurm's crash window, not a move's); strata sees a controller that is gone either way
    os.kill(pid_of(site.root / "vclusters/alpha/ctld/slurmctld.pid"), signal.SIGTERM)
    out, errout = apply.communicate(timeout=120)
    r = subprocess.CompletedProcess(apply.args, apply.returncode, out, errout)
    assert_one_clear_error(r, "slurmctld of vCluster alpha is not running", f"strata up --site {site.file}")
    assert "Zero Bytes" not in r.stderr
    site.strata("up")  # the controller is back and the running job survived it
    assert site.job("alpha", job)["JobState"] == "RUNNING"
    site.slurm("alpha", "scancel", job)
    site.strata("apply")
    assert site.members()["beta"] == ["nid002", "nid003"]
    assert_journal_readable(site)


def test_a_munged_that_does_not_answer_is_named_not_the_controller(site):
    munged = pid_of(site.root / "vclusters/beta/munge/munged.pid")
    site.set_owner("nid002", "beta")
    os.kill(munged, signal.SIGSTOP)
    try:
        r = site.strata("apply", check=False)
    finally:
        os.kill(munged, signal.SIGCONT)
    assert_one_clear_error(r, f"munged of vCluster beta (pid {munged}) does not answer", f"kill {munged}")
    assert "slurmctld" not in r.stderr
    assert site.members()["alpha"] == ["nid001", "nid002"]  # refused before anything moved
    site.strata("apply")
    assert site.members()["beta"] == ["nid002", "nid003"]


def test_a_munged_killed_during_a_move_is_started_again_by_the_move(site):
    job = site.sbatch("alpha", "nid002", "sleep 3")
    site.wait_job("alpha", job, ("RUNNING",))
    site.set_owner("nid002", "beta")
    apply = apply_waiting_on(site, "nid002")
    os.kill(pid_of(site.root / "vclusters/beta/munge/munged.pid"), signal.SIGKILL)
    out, errout = apply.communicate(timeout=120)
    assert apply.returncode == 0, out + errout
    assert site.members()["beta"] == ["nid002", "nid003"] and site.sinfo("beta")["nid002"] == "idle"


@pytest.fixture
def tmpfs_site(tmp_path):
    """A site whose state dir is a small filesystem of its own, to fill."""
    require_slurm()
    s = SiteUnderTest(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "strata-e2e-full", str(s.state)], check=True)
    try:
        s.strata("up")
        yield s
    finally:
        s.down()
        subprocess.run(["umount", "-l", str(s.state)], check=False)
        shutil.rmtree(s.state, ignore_errors=True)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 512, 1):  # then the last bytes a bigger write could not take
            try:
                while f.write(b"\0" * size):
                    pass
            except OSError:
                pass
    return filler


def test_a_full_disk_under_the_state_dir_is_one_line_and_a_rerun_finishes(tmpfs_site):
    site = tmpfs_site
    site.set_owner("nid002", "beta")
    filler = fill(site.state)
    try:
        r = site.strata("apply", check=False)
    finally:
        filler.unlink()
    assert_one_clear_error(r, "No space left on device", str(site.state), "free space")
    assert_journal_readable(site)
    site.strata("apply")
    assert site.members()["beta"] == ["nid002", "nid003"]
    assert_journal_readable(site)


def test_an_unwritable_node_root_is_one_line_and_a_rerun_finishes(site):
    node_dir = site.root / "nodes/nid004"
    node_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(node_dir), str(node_dir)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(node_dir)], check=True)
        site.set_owner("nid004", "gamma")
        r = site.strata("apply", check=False)
    finally:
        subprocess.run(["umount", str(node_dir)], check=True)
    assert_one_clear_error(r, "Read-only file system", str(node_dir), "read-only")
    site.strata("apply")
    assert site.members()["gamma"] == ["nid004"]


def test_a_user_who_is_not_root_is_told_to_run_as_root(site):
    from tests.e2e.test_containers import NOBODY, user_python

    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="strata-e2e-user-"))
    try:
        home.chmod(0o755)
        python = user_python(home / "venv")
        shutil.copy(site.file, home / "site.yaml")
        (home / "site.yaml").chmod(0o644)
        for cmd in ("up", "apply", "down"):
            r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                str(python), "-m", "strata.cli", cmd, "--site", str(home / "site.yaml")],
                               capture_output=True, text=True, timeout=60, cwd=home, env=site.env(HOME=str(home)))
            assert_one_clear_error(r, "run this command as root", f"uid {NOBODY}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert site.status()["platforms"][0]["vclusters"][0]["controller"] == "running"  # nothing was stopped
