"""The sbatch template: golden renders, and the rendered script run under a stand-in srun/scontrol."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import REPO, losses, small_run, trainer_env, wait_for

from workloads.launch import render_sbatch

GOLDEN = Path(__file__).with_name("golden")

CASES = {
    "train_tiny_2nodes.sbatch": dict(
        job_name="tiny", nodes=2, ntasks_per_node=1, config="tiny", workdir="/srv/strata", run_dir="/srv/runs/tiny",
        constraint="thp_never&nvidia_vboost_enabled", environment="pytorch-24.01", partition="normal",
        time_limit="00:30:00", overrides=["--training.max_steps=200", "--optimizer.lr=3e-3"],
        env={"GLOO_SOCKET_IFNAME": "lo"}),
    "train_8b_gpu.sbatch": dict(
        job_name="apertus-8b", nodes=4, ntasks_per_node=4, config="8b", workdir="/capstor/strata", gpus_per_node=4,
        cpus_per_task=72, account="a-ml", time_limit="12:00:00", requeue=False, python="/opt/venv/bin/python"),
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_render_matches_golden_file(golden):
    assert render_sbatch(**CASES[golden]) == (GOLDEN / golden).read_text()


def test_render_quotes_user_values():
    text = render_sbatch(job_name="j", nodes=1, ntasks_per_node=1, config="my cfg.toml", workdir="/a b",
                         overrides=["--job.name=x; rm -rf /"])
    assert "cd '/a b'" in text and "'my cfg.toml'" in text and "'--job.name=x; rm -rf /'" in text


def test_rendered_script_forwards_usr1_checkpoints_and_requeues(tmp_path, sample_prefix):
    """Run the script with bash; `srun` runs the task in place and `scontrol` records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    run_dir = tmp_path / "run"
    overrides = small_run(run_dir, sample_prefix, **{"training.max_steps": 100000, "checkpoint.interval": 1000})
    script = tmp_path / "train.sbatch"
    script.write_text(render_sbatch(job_name="t", nodes=1, ntasks_per_node=1, config="tiny", workdir=REPO,
                                    overrides=overrides, python=sys.executable, master_addr="127.0.0.1"))
    env = trainer_env(PATH=f"{bin_dir}:/usr/bin:/bin", SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="n1",
                      SCONTROL_LOG=str(tmp_path / "scontrol.log"))
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, timeout=90)
    proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@90` does: only the batch shell gets it
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "[strata] USR1: asking the trainer" in out and "preempted: final checkpoint" in out
    stopped = max(step for step, _ in losses(run_dir))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert json.loads((run_dir / "config.json").read_text())["job"]["name"] == "t"
