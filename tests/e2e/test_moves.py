"""Node moves on a real local site: jobs finish, timeouts and admin drains are respected, state survives."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time

import pytest

from tests.e2e.conftest import SiteUnderTest, require_slurm

pytestmark = pytest.mark.e2e


def test_up_puts_every_node_in_its_vcluster(site):
    assert site.members() == {"alpha": ["nid001", "nid002"], "beta": ["nid003"], "gamma": []}
    assert site.sinfo("alpha") == {"nid001": "idle", "nid002": "idle"}
    assert site.sinfo("beta") == {"nid003": "idle"}
    st = site.status()
    assert [n["node"] for n in st["free_pool"]] == ["nid004"]
    alpha = st["platforms"][0]["vclusters"][0]
    assert alpha["controller"] == "running" and [n["state"] for n in alpha["nodes"]] == ["idle", "idle"]
    env = site.strata("env", "alpha").stdout.strip()
    assert env == f"export SLURM_CONF={site.conf('alpha')}"


def test_plan_lists_moves_as_text_and_json(site):
    site.set_owner("nid002", "beta")
    site.set_owner("nid004", "gamma")
    assert site.strata("plan").stdout.splitlines() == [
        "move    nid002: alpha -> beta", "move    nid004: free pool -> gamma"]
    import json

    plan = json.loads(site.strata("plan", "--json").stdout)
    assert plan["moves"] == [{"node": "nid002", "source": "alpha", "target": "beta"},
                             {"node": "nid004", "source": None, "target": "gamma"}]
    assert site.members()["alpha"] == ["nid001", "nid002"]  # plan changes nothing


def test_move_waits_for_running_job_which_completes(site):
    job = site.sbatch("alpha", "nid002", "sleep 4; echo done")
    site.wait_job("alpha", job, ("RUNNING",))
    site.set_owner("nid002", "beta")
    site.set_owner("nid003", None)
    # watch the job while apply runs: its end state as Slurm reports it when it ends, before any restart
    ended: dict = {}
    watcher = threading.Thread(target=lambda: ended.update(
        site.wait_job("alpha", job, ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL"), timeout=120)))
    watcher.start()
    r = site.strata("apply")
    watcher.join()
    assert ended["JobState"] == "COMPLETED" and ended["ExitCode"] == "0:0"
    assert (site.tmp / f"job-{job}.out").read_text().strip() == "done"
    assert "moved    nid002: alpha -> beta" in r.stdout
    assert site.members() == {"alpha": ["nid001"], "beta": ["nid002"], "gamma": []}
    assert site.sinfo("alpha") == {"nid001": "idle"}
    assert site.sinfo("beta") == {"nid002": "idle"}
    # the node is usable in its new vCluster
    job2 = site.sbatch("beta", "nid002", "hostname")
    assert site.wait_job("beta", job2, ("COMPLETED",))["ExitCode"] == "0:0"


def test_timeout_leaves_node_drained_in_source_and_rerun_finishes(site):
    job = site.sbatch("alpha", "nid001", "sleep 300")
    site.wait_job("alpha", job, ("RUNNING",))
    site.set_owner("nid001", "gamma")
    r = site.strata("apply", "--timeout", "2", check=False)
    assert r.returncode == 1
    assert "timeout" in r.stdout and "left drained in alpha" in r.stdout
    assert site.members()["alpha"] == ["nid001", "nid002"]
    st = site.node_state("alpha", "nid001")
    assert st.drain and st.reason == "strata: moving to gamma"
    assert site.job("alpha", job)["JobState"] == "RUNNING"  # never killed
    site.slurm("alpha", "scancel", job)
    site.strata("apply")
    assert site.members()["gamma"] == ["nid001"]
    assert site.sinfo("gamma") == {"nid001": "idle"}


def test_force_requeues_jobs_instead_of_waiting(site):
    # placed by excluding nid002 (not -w: a job pinned to a node that left cannot run again)
    job = site.slurm("alpha", "sbatch", "--parsable", "-x", "nid002", "--requeue", "-o", "/dev/null",
                     "--wrap", "sleep 300").strip()
    info = site.wait_job("alpha", job, ("RUNNING",))
    assert info["NodeList"] == "nid001"
    site.set_owner("nid001", "beta")
    r = site.strata("apply", "--force", "--timeout", "60")
    assert f"requeued job {job}" in r.stdout
    assert site.members()["beta"] == ["nid001", "nid003"]
    info = site.job("alpha", job)
    assert info["JobState"] == "PENDING" and int(info["Restarts"]) >= 1  # requeued, waits for a node
    site.slurm("alpha", "scancel", job)


def test_node_drained_by_admin_is_not_moved_and_keeps_its_drain(site):
    site.slurm("alpha", "scontrol", "update", "NodeName=nid002", "State=DRAIN", "Reason=bad dimm")
    site.set_owner("nid002", "beta")
    r = site.strata("apply", check=False)
    assert r.returncode == 1 and "drained by someone else ('bad dimm')" in r.stdout
    st = site.node_state("alpha", "nid002")
    assert site.members()["alpha"] == ["nid001", "nid002"] and st.drain and st.reason == "bad dimm"
    # --force moves it, and the admin's drain travels with it: we never clear it
    site.strata("apply", "--force")
    st = site.node_state("beta", "nid002")
    assert site.members()["beta"] == ["nid002", "nid003"]
    assert st.drain and st.reason == "bad dimm"
    assert site.sinfo("beta")["nid002"] == "drain"


def test_down_stops_daemons_by_pid_keeps_state_and_up_restores(site):
    site.set_owner("nid004", "beta")
    site.strata("apply")
    before = site.members()
    pids = [int(p.read_text()) for p in site.root.rglob("*.pid")]
    assert len(pids) >= 3 + 3 + 4  # munged + slurmctld per vCluster, slurmd per member
    site.strata("down")
    time.sleep(0.2)
    from services.slurm.daemons import alive

    assert not [p for p in pids if alive(p)]
    assert site.members() == before  # state kept
    site.strata("up")
    assert site.members() == before
    assert site.sinfo("beta") == {"nid003": "idle", "nid004": "idle"}


def test_dead_controller_shows_in_status_and_up_restarts_it(site):
    pid = int((site.root / "vclusters/beta/ctld/slurmctld.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    from services.slurm.daemons import alive

    while alive(pid):
        time.sleep(0.05)
    beta = site.status()["platforms"][0]["vclusters"][1]
    assert beta["vcluster"] == "beta" and beta["controller"] == "stopped"
    site.strata("up")
    assert site.sinfo("beta") == {"nid003": "idle"}


def test_two_sites_run_side_by_side_and_a_port_clash_is_reported(site, tmp_path_factory):
    other = SiteUnderTest(tmp_path_factory.mktemp("other"), name="t")  # same site name, other state dir
    try:
        other.strata("up")
        assert other.sinfo("alpha") == {"nid001": "idle", "nid002": "idle"}
        assert site.sinfo("alpha") == {"nid001": "idle", "nid002": "idle"}
        assert other.conf("alpha") != site.conf("alpha")
    finally:
        other.down()
    clash = SiteUnderTest(tmp_path_factory.mktemp("clash"), name="t")
    clash.data["ports"]["base"] = site.data["ports"]["base"]
    clash.write()
    try:
        r = clash.strata("up", check=False)
        assert r.returncode == 1
        assert f"port {site.data['ports']['base']} for slurmctld of vCluster alpha is in use" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        clash.down()
    assert site.sinfo("alpha") == {"nid001": "idle", "nid002": "idle"}  # the running site is untouched


def test_missing_slurm_install_is_reported_clearly(tmp_path):
    require_slurm()
    s = SiteUnderTest(tmp_path)
    venv_bin = os.path.dirname(sys.executable)
    try:
        r = s.strata("up", check=False, PATH=f"{venv_bin}:/bin")  # no /usr/sbin, /usr/bin: no Slurm
    finally:
        shutil.rmtree(s.state, ignore_errors=True)
    assert r.returncode == 1
    assert "Slurm/munge not installed" in r.stderr and "make setup" in r.stderr
    assert "Traceback" not in r.stderr
