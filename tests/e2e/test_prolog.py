"""Prolog/epilog parts on a real local site: THP/vBoost from -C features, GPU memory drains, broken parts, vetting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import SiteUnderTest, require_slurm

pytestmark = pytest.mark.e2e

THP = "sys/kernel/mm/transparent_hugepage/enabled"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL")


@pytest.fixture(scope="module")
def psite(tmp_path_factory):
    """alpha = nid[001-003]; nid001-002 have vBoost-capable GPUs, nid003 does not."""
    require_slurm()
    s = SiteUnderTest(tmp_path_factory.mktemp("prolog"), owners={"alpha": "nid[001-003]"})
    hw = s.data["nodes"][0]["hardware"]
    s.data["nodes"] = [
        {"names": "nid[001-002]", "hardware": {**hw, "gpus": {**hw["gpus"], "vboost": True}}},
        {"names": "nid[003-004]", "hardware": hw},
    ]
    s.write()
    try:
        s.strata("up")
        yield s
    finally:
        s.down()


def node_root(s: SiteUnderTest, node: str):
    return s.root / "nodes" / node / "root"


def wait_idle(s: SiteUnderTest, node: str, timeout: float = 30) -> None:
    """Until the node is idle again: its epilog has finished."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if s.sinfo("alpha").get(node) == "idle":  # not "idle*" (not responding) nor draining
            return
        time.sleep(0.1)
    raise AssertionError(f"{node} not idle: {s.sinfo('alpha')}")


def test_thp_never_and_vboost_apply_during_the_job_and_reset_after(psite):
    root = node_root(psite, "nid002")
    script = (f'cat "$STRATA_NODE_ROOT/{THP}"; cat "$STRATA_NODE_ROOT/run/strata/gpus.json" | tr -d " \\n"; echo;'
              ' echo "$TRITON_CACHE_DIR"; test -d "$TRITON_CACHE_DIR" && echo cache-ok')
    job = psite.sbatch("alpha", "nid002", script, "-C", "thp_never&nvidia_vboost_enabled")
    info = psite.wait_job("alpha", job, ENDED)
    assert info["JobState"] == "COMPLETED", info
    thp, gpus, cache, ok = (psite.tmp / f"job-{job}.out").read_text().splitlines()
    assert thp == "always madvise [never]"
    assert [g["vboost"] for g in json.loads(gpus)] == [1, 1, 1, 1]
    assert cache == f"{root}/tmp/strata-job-{job}/triton" and ok == "cache-ok"
    wait_idle(psite, "nid002")
    # the epilog put the node's defaults back and removed the job's cache dir
    assert (root / THP).read_text().strip() == "[always] madvise never"
    assert [g["vboost"] for g in json.loads((root / "run/strata/gpus.json").read_text())] == [0, 0, 0, 0]
    assert not (root / f"tmp/strata-job-{job}").exists()
    checks = json.loads((root.parent / "checks.json").read_text())
    assert checks["prolog"]["job"] == job and checks["prolog"]["ok"]
    assert [p["name"] for p in checks["prolog"]["parts"]] == ["cache-flush", "gpu-memory", "thp-vboost", "job-cache",
                                                              "vetnode"]
    assert (root / "proc/sys/vm/drop_caches").read_text() == "3\n"


def test_feature_the_node_lacks_is_refused_or_pending_with_slurms_reason(psite):
    # asked of a node without it: Slurm refuses the submission itself
    r = subprocess.run(["sbatch", "-w", "nid003", "-C", "nvidia_vboost_enabled", "--wrap", "true"],
                       capture_output=True, text=True, env={**os.environ, "SLURM_CONF": str(psite.conf("alpha"))})
    assert r.returncode == 1 and "Requested node configuration is not available" in r.stderr
    # the nodes offering it are drained: the job waits with Slurm's reason, and never lands on nid003
    psite.slurm("alpha", "scontrol", "update", "NodeName=nid[001-002]", "State=DRAIN", "Reason=strata: test")
    out = psite.slurm("alpha", "sbatch", "--parsable", "-C", "nvidia_vboost_enabled", "--wrap", "true")
    job = out.strip().split(";")[0]
    try:
        time.sleep(2)
        info = psite.job("alpha", job)
        assert info["JobState"] == "PENDING" and info["Reason"].startswith("ReqNodeNotAvail"), info
        assert psite.sinfo("alpha")["nid003"] == "idle"
    finally:
        psite.slurm("alpha", "scancel", job)
        psite.slurm("alpha", "scontrol", "update", "NodeName=nid[001-002]", "State=RESUME")


def requeued_off_nid001(psite, idle: tuple[str, ...], *opts: str) -> tuple[str, dict]:
    """Submit `hostname` once `idle` are idle (nid001 first: Slurm starts the job there), expect its prolog
    to fail there and the job to be requeued and completed on another node; return (job, its info)."""
    for n in idle:
        wait_idle(psite, n)
    out = psite.slurm("alpha", "sbatch", "--parsable", *opts, "-o", str(psite.tmp / "job-%j.out"), "--wrap", "hostname")
    job = out.strip().split(";")[0]
    info = psite.wait_job("alpha", job, ENDED, timeout=90)
    assert info["JobState"] == "COMPLETED" and info["NodeList"] != "nid001", info
    assert int(info["Restarts"]) >= 1
    return job, info


def test_held_gpu_memory_drains_node_with_our_reason_and_job_runs_elsewhere(psite):
    gpus_file = node_root(psite, "nid001") / "run/strata/gpus.json"
    gpus = json.loads(gpus_file.read_text())
    gpus[2]["memory_used_mib"] = int(gpus[2]["memory_total_mib"] * 0.29)  # 71% free
    gpus_file.write_text(json.dumps(gpus))
    try:
        # nid002 is the healthy one left
        requeued_off_nid001(psite, ("nid001", "nid002"), "-x", "nid003")
        st = psite.node_state("alpha", "nid001")
        assert st.drain and st.reason == "strata: prolog gpu-memory: GPU2 71% free"
        listing = psite.strata("nodes").stdout
        assert "nid001" in listing and "gpu-memory: GPU2 71% free" in listing
    finally:
        gpus[2]["memory_used_mib"] = 0
        gpus_file.write_text(json.dumps(gpus))
    psite.strata("nodes", "resume", "nid001")
    assert not psite.node_state("alpha", "nid001").drain


def test_broken_part_fails_cleanly_and_an_admins_drain_is_never_resumed(psite):
    installed = node_root(psite, "nid003") / "etc/strata/prolog.d"
    created = not installed.exists()  # the prolog role may have installed our parts there already
    installed.mkdir(parents=True, exist_ok=True)
    (installed / "55-broken").write_text("#!/bin/sh\necho 'cannot reach the fabric' >&2\nexit 3\n")
    (installed / "55-broken").chmod(0o755)
    job = psite.sbatch("alpha", "nid003", "true")
    try:
        end = time.monotonic() + 30
        while not (st := psite.node_state("alpha", "nid003")).drain and time.monotonic() < end:
            time.sleep(0.2)
        assert st.reason == "strata: prolog broken: exit 3: cannot reach the fabric"
        info = psite.wait_job("alpha", job, ("PENDING",), timeout=20)  # requeued, waiting for its node
        assert int(info["Restarts"]) == 1, info
    finally:
        psite.slurm("alpha", "scancel", job)
        (installed / "55-broken").unlink()
        if created:
            installed.rmdir()
    psite.strata("nodes", "resume", "nid003")
    psite.slurm("alpha", "scontrol", "update", "NodeName=nid003", "State=DRAIN", "Reason=admin: bad DIMM")
    r = psite.strata("nodes", "resume", "nid003", check=False)
    assert r.returncode == 1 and "not ours" in r.stderr
    st = psite.node_state("alpha", "nid003")
    assert st.drain and st.reason == "admin: bad DIMM"
    psite.slurm("alpha", "scontrol", "update", "NodeName=nid003", "State=RESUME")


def test_vet_aborts_a_two_node_allocation_naming_the_slow_node(psite):
    perf = node_root(psite, "nid002") / "run/strata/perf.json"
    perf.write_text(json.dumps({"matmul": 1e-4}))  # emulated: nid002 multiplies 10,000x slower
    try:
        script = (f"srun --ntasks-per-node=1 {sys.executable} -m strata.cli vet --profile llm || exit 1; "
                  "echo training starts")
        out = psite.slurm("alpha", "sbatch", "--parsable", "-N2", "-w", "nid[001-002]", "--ntasks-per-node=1",
                          "-o", str(psite.tmp / "job-%j.out"), "--wrap", script)
        job = out.strip().split(";")[0]
        info = psite.wait_job("alpha", job, ENDED, timeout=120)
    finally:
        perf.unlink()
    text = (psite.tmp / f"job-{job}.out").read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", text
    assert "vet FAILED on 1 node(s): nid002" in text
    fails = [line for line in text.splitlines() if "FAIL nid" in line]
    assert len(fails) == 1 and fails[0].startswith("  FAIL nid002 matmul:"), text
    assert "ok   nid001 matmul" in text and "ok   nid001 allreduce" in text and "2 tasks, gloo" in text
    assert "training starts" not in text


def test_vetnode_drains_a_slow_node_naming_the_check_and_the_job_runs_elsewhere(psite):
    perf = node_root(psite, "nid001") / "run/strata/perf.json"
    perf.write_text(json.dumps({"matmul": 1e-6}))  # emulated: nid001 multiplies a million times slower
    try:
        job, info = requeued_off_nid001(psite, ("nid001", "nid002", "nid003"), "-C", "vetnode")
        st = psite.node_state("alpha", "nid001")
        assert st.drain and st.reason.startswith("strata: prolog vetnode: matmul: "), st.reason
        assert "TFLOP/s < 0.001 (cpu)" in st.reason
        ran = json.loads((node_root(psite, info["NodeList"]).parent / "checks.json").read_text())["prolog"]
        vetnode = [p for p in ran["parts"] if p["name"] == "vetnode"]
        assert ran["job"] == job and vetnode[0]["ok"] and "passed" in vetnode[0]["detail"], ran
    finally:
        perf.unlink()
    psite.strata("nodes", "resume", "nid001")
    assert not psite.node_state("alpha", "nid001").drain
