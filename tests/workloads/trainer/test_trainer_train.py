"""The training loop end to end on CPU: learning, exact resume after a kill, preemption, 2-rank DDP and FSDP2."""

import signal

from trainer_helpers import losses, run_trainer, small_run, start_trainer, start_two_ranks, wait_for

from workloads.trainer.components.checkpoint import CheckpointManager
from workloads.trainer.train import main


def test_loss_goes_down_on_tiny(tmp_path, sample_prefix):
    assert main(["--config", "tiny", *small_run(tmp_path, sample_prefix, **{"checkpoint.enabled": "false"})]) == 0
    curve = [loss for _, loss in losses(tmp_path)]
    assert len(curve) == 20
    assert sum(curve[-3:]) / 3 < curve[0] - 1.0, curve


def test_twenty_steps_equal_ten_then_kill_then_ten_resumed(tmp_path, sample_prefix):
    one, two = tmp_path / "one", tmp_path / "two"
    ref = run_trainer(small_run(one, sample_prefix))
    assert ref.returncode == 0, ref.stdout

    # SIGKILL the second run as soon as its step-10 checkpoint is committed (mid-training, no clean-up).
    proc = start_trainer(small_run(two, sample_prefix, **{"training.max_steps": 20}))
    latest = two / "checkpoints" / "latest"
    committed = wait_for(lambda: latest.exists() and latest.read_text() == "step_00000010", timeout=90)
    proc.kill()
    out = proc.communicate()[0]
    assert committed and proc.returncode == -signal.SIGKILL, out
    killed_at = max(step for step, _ in losses(two))
    assert killed_at < 20, "the run finished before it could be killed: the test proved nothing"

    resumed = run_trainer(small_run(two, sample_prefix))
    assert resumed.returncode == 0, resumed.stdout
    assert "resumed from" in resumed.stdout and "at step 10" in resumed.stdout
    assert losses(two) == losses(one)  # all 20 (step, loss) pairs, bit for bit
    final_one = CheckpointManager.read(one / "checkpoints" / "step_00000020")["model"]
    final_two = CheckpointManager.read(two / "checkpoints" / "step_00000020")["model"]
    assert all(final_one[k].equal(final_two[k]) for k in final_one)


def test_sigusr1_checkpoints_exits_zero_and_rerun_resumes(tmp_path, sample_prefix):
    args = small_run(tmp_path, sample_prefix, **{"training.max_steps": 100000, "checkpoint.interval": 1000})
    proc = start_trainer(args)
    metrics = tmp_path / "metrics.jsonl"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, timeout=90)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "received SIGUSR1" in out and "preempted: final checkpoint" in out
    stopped = max(step for step, _ in losses(tmp_path))
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"

    rerun = run_trainer([*args, f"--training.max_steps={stopped + 2}"])
    assert rerun.returncode == 0, rerun.stdout
    assert f"at step {stopped} " in rerun.stdout
    assert [s for s, _ in losses(tmp_path)] == list(range(1, stopped + 3))


def test_two_rank_gloo_ddp_learns_and_ranks_agree(tmp_path, sample_prefix):
    args = small_run(tmp_path, sample_prefix, **{"training.max_steps": 8, "checkpoint.interval": 4,
                                                 "training.grad_accum_steps": 2})
    procs = start_two_ranks(tmp_path, args)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "weights agree across 2 ranks" in outs[0]
    curve = [loss for _, loss in losses(tmp_path)]
    assert curve[-1] < curve[0] - 1.0, curve
    # two ranks × 2 micro-batches × 4 samples: every step consumed 16 distinct samples
    assert CheckpointManager.read(tmp_path / "checkpoints" / "step_00000008")["train"]["consumed_samples"] == 128


def test_two_rank_fsdp2_learns_and_resumes_exactly_after_a_kill(tmp_path, sample_prefix):
    """FSDP2 (fully_shard per block) over gloo: each rank writes and reads back its own shards (DCP);
    8 steps in one run equal 4 steps, SIGKILL of both ranks, and 4 resumed steps."""
    one, two = tmp_path / "one", tmp_path / "two"
    opts = {"training.max_steps": 8, "checkpoint.interval": 4, "parallel.data_parallel": "fsdp"}
    ref = start_two_ranks(one, small_run(one, sample_prefix, **opts))
    outs = [p.communicate(timeout=240)[0] for p in ref]
    assert [p.returncode for p in ref] == [0, 0], outs
    curve = [loss for _, loss in losses(one)]
    assert curve[-1] < curve[0] - 1.0, curve

    killed = start_two_ranks(two, small_run(two, sample_prefix, **opts))
    latest = two / "checkpoints" / "latest"
    committed = wait_for(lambda: latest.exists() and latest.read_text() == "step_00000004", timeout=120)
    for p in killed:
        p.kill()
        p.communicate()
    assert committed
    resumed = start_two_ranks(two, small_run(two, sample_prefix, **opts))
    outs = [p.communicate(timeout=240)[0] for p in resumed]
    assert [p.returncode for p in resumed] == [0, 0], outs
    assert "resumed from" in outs[0] and "at step 4" in outs[0]
    assert losses(two)[-4:] == losses(one)[-4:] and [s for s, _ in losses(two)][-4:] == [5, 6, 7, 8]
    final_one = CheckpointManager.read(one / "checkpoints" / "step_00000008")["model"]
    final_two = CheckpointManager.read(two / "checkpoints" / "step_00000008")["model"]
    assert all(final_one[k].equal(final_two[k]) for k in final_one)


def test_checkpoint_of_another_shape_fails_and_overwrites_nothing(tmp_path, sample_prefix, capsys):
    args = small_run(tmp_path, sample_prefix, **{"training.max_steps": 2, "checkpoint.interval": 1})
    assert main(["--config", "tiny", *args]) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["--config", "tiny", *args, "--model.dim=64", "--training.max_steps=4"]) == 1
    assert "dim=128 in the checkpoint but 64 now" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_missing_dataset_is_refused_before_the_run_writes(tmp_path, capsys):
    code = main(["--config", "tiny", f"--job.run_dir={tmp_path}", f'--data.paths=["{tmp_path}/nope"]'])
    assert code == 2
    assert "data.paths[0]" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_goldfish_masks_labels_and_ademamix_trains(tmp_path, sample_prefix):
    plain, fish = tmp_path / "plain", tmp_path / "fish"
    common = {"checkpoint.enabled": "false", "training.max_steps": 12, "lr_schedule.warmup_steps": 2}
    assert main(["--config", "tiny", *small_run(plain, sample_prefix, **common)]) == 0
    assert main(["--config", "tiny", *small_run(fish, sample_prefix, **common, **{
        "data.goldfish": "true", "data.goldfish_k": 3, "data.goldfish_h": 4, "optimizer.name": "ademamix"})]) == 0
    plain_curve, fish_curve = [v for _, v in losses(plain)], [v for _, v in losses(fish)]
    # same weights and batch at step 1: only the dropped labels change the loss
    assert fish_curve[0] != plain_curve[0] and abs(fish_curve[0] - plain_curve[0]) < 0.5
    assert fish_curve[-1] < fish_curve[0] - 1.0, fish_curve
