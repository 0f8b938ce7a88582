"""Refactors keep the loss identical at a fixed seed: 5 tiny CPU steps give exactly the recorded losses.

The numbers were recorded with the trainer as it was before its components took their own config sections
(commit ec8e77b, torch 2.13.0+cpu, AVX2, one intra-op thread) and must stay bit for bit equal: a change that
moves one of them (data order, seed use, lr schedule, clipping, reduction order) changed what is trained.
They depend on the CPU's kernels; on another platform, record them afresh with the code before a change.
The cases reach every component: the bundled sample and `data.paths`, AdamW and AdEMAMix, Goldfish, gradient
accumulation, every WSD phase (warmup 2, decay over the last 1 or 2 steps), clipping, asynchronous
checkpoints written mid-run, DDP and FSDP2 over two gloo ranks.
"""

import json

import pytest
from trainer_helpers import losses, run_trainer, start_ranks

BASE = {"training.seq_len": 32, "training.micro_batch_size": 4, "training.max_steps": 5, "training.num_threads": 1,
        "lr_schedule.warmup_steps": 2}

CASES = {
    "adamw_bundled_sample_async_ckpt": (1, {"checkpoint.interval": 2}, [
        9.01638126373291, 8.90829086303711, 8.520962715148926, 8.560049057006836, 8.121770858764648]),
    "ademamix_goldfish_accum_cosine": (1, {
        "data.paths": "PREFIX", "optimizer.name": "ademamix", "data.goldfish": "true", "data.goldfish_k": 3,
        "data.goldfish_h": 4, "training.grad_accum_steps": 2, "lr_schedule.decay_shape": "cosine",
        "lr_schedule.decay_fraction": 0.4, "lr_schedule.min_lr_ratio": 0.1, "training.max_grad_norm": 0.5,
        "checkpoint.enabled": "false"}, [
        9.033089637756348, 8.816322326660156, 8.608804702758789, 8.4038724899292, 8.264479637145996]),
    "ddp_2_ranks_accum": (2, {"data.paths": "PREFIX", "training.grad_accum_steps": 2, "checkpoint.interval": 2}, [
        9.033082962036133, 8.799675941467285, 8.503911972045898, 8.207719802856445, 7.875908851623535]),
    "fsdp_2_ranks": (2, {"data.paths": "PREFIX", "parallel.data_parallel": "fsdp", "checkpoint.interval": 2}, [
        9.061990737915039, 8.836971282958984, 8.580979347229004, 8.36945915222168, 8.25589370727539]),
}


@pytest.mark.parametrize("case", CASES)
def test_five_steps_at_a_fixed_seed_give_the_recorded_losses_bit_for_bit(case, tmp_path, sample_prefix):
    world, extra, expected = CASES[case]
    opts = {**BASE, "job.run_dir": str(tmp_path),
            **{k: json.dumps([sample_prefix]) if v == "PREFIX" else v for k, v in extra.items()}}
    args = [f"--{k}={v}" for k, v in opts.items()]
    if world == 1:
        r = run_trainer(args)
        assert r.returncode == 0, r.stdout
    else:
        procs = start_ranks(tmp_path, args, world)
        outs = [p.communicate(timeout=240)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * world, outs
    assert losses(tmp_path) == list(enumerate(expected, start=1))
