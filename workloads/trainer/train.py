"""The training loop: `python -m workloads.trainer.train --config tiny [--section.key=value ...]`.

Also runs under torchrun or srun (several ranks: DDP or FSDP2). Resumes from <checkpoint dir>/latest,
writes a checkpoint every `checkpoint.interval` steps without stopping, and on SIGUSR1/SIGTERM finishes
the step, writes a final checkpoint and exits 0. Exit codes: 0 done or preempted, 1 runtime error
(data, checkpoint), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .components.checkpoint import CheckpointError, CheckpointManager, get_train_state, load_train_state
from .components.lr_schedule import wsd_lr
from .components.metrics import MetricsLogger, device_peak_flops
from .components.optimizer import build_optimizer
from .components.signals import PreemptionHandler
from .config import ConfigError, TrainerConfig, load_config
from .data import DataError, goldfish_mask
from .loader import ShardedBatchLoader, build_loader
from .model import ModelArgs, Transformer, flops_per_token
from .parallelize import (DistContext, destroy_distributed, init_distributed, maybe_no_sync, parallelize_model,
                          unwrap)

logger = logging.getLogger("workloads.trainer")


def build_model(args: ModelArgs, device: torch.device, *, on_meta: bool) -> Transformer:
    """The model on `device`, initialised from the current torch seed (on meta first for FSDP)."""
    if not on_meta:
        with torch.device(device):
            return Transformer(args)
    with torch.device("meta"):
        model = Transformer(args)
    return model  # materialised by finish_meta_init after sharding


def finish_meta_init(model: torch.nn.Module, device: torch.device) -> None:
    """Allocate a meta-built (and possibly sharded) model on `device` and initialise it."""
    model.to_empty(device=device)
    model.init_weights()


def compute_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labels that are kept (targets = -100 are ignored)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: ShardedBatchLoader, *,
               consumed_samples: int, lr: float, max_grad_norm: float, autocast, goldfish: tuple[int, int] | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm) as tensors."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=loader.device)
    for micro in range(loader.accum):
        x, y = loader.get(consumed_samples, micro)  # (B, T) each
        if goldfish is not None:
            y = y.masked_fill(~goldfish_mask(y, *goldfish), -100)
        with maybe_no_sync(model, sync=micro == loader.accum - 1), autocast:
            loss = compute_loss(model(x), y)
        (loss / loader.accum).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"), foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / loader.accum, grad_norm


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainerConfig, ctx: DistContext) -> int:
    """Train until max_steps or preemption; returns the process exit code."""
    t_cfg, run_dir = cfg.training, Path(cfg.job.run_dir)
    margs = cfg.model_args()
    model_shape = {k: v for k, v in margs.shape_dict().items() if k != "max_seq_len"}
    seed_everything(cfg.job.seed)
    fsdp = cfg.parallel.data_parallel == "fsdp" and ctx.world_size > 1
    on_cuda = ctx.device.type == "cuda"
    bf16 = on_cuda and t_cfg.mixed_precision == "bf16"
    model = build_model(margs, ctx.device, on_meta=fsdp)
    model = parallelize_model(model, ctx, data_parallel=cfg.parallel.data_parallel,
                              bucket_cap_mb=cfg.parallel.bucket_cap_mb, compile=t_cfg.compile, bf16=bf16)
    if fsdp:
        finish_meta_init(model, ctx.device)
    optimizer = build_optimizer(model, cfg.optimizer, max_steps=t_cfg.max_steps)
    ck = cfg.checkpoint
    ckpt = CheckpointManager(ck.dir or run_dir / "checkpoints", rank=ctx.rank, keep=ck.keep,
                             asynchronous=ck.asynchronous, interval=ck.interval, mtbf_s=ck.mtbf_s,
                             auto_first_step=ck.auto_first_step)

    # Resume before writing anything: a checkpoint that does not fit must leave the run untouched.
    step, consumed = 0, 0
    latest = ckpt.latest_path() if ck.resume else None
    if latest is not None:
        resumed = load_train_state(CheckpointManager.read(latest), model, optimizer, model_shape=model_shape,
                                   path=latest)
        step, consumed = resumed["step"], resumed["consumed_samples"]
        ckpt.reset_schedule(step)
        logger.info("resumed from %s at step %d (%d samples consumed)", latest, step, consumed)
    if step >= t_cfg.max_steps:
        logger.info("already trained %d/%d steps: nothing to do", step, t_cfg.max_steps)
        return 0

    config_dump = cfg.model_dump(mode="json")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({**config_dump, "resolved_model": margs.shape_dict()},
                                                        indent=2))
    loader = build_loader(cfg, run_dir=run_dir, rank=ctx.rank, world_size=ctx.world_size,
                          vocab_size=margs.vocab_size, device=ctx.device)
    tokens_per_step = loader.global_batch_size * t_cfg.seq_len
    metrics = MetricsLogger(cfg.metrics.jsonl or run_dir / "metrics.jsonl", enabled=ctx.is_main,
                            flops_per_token=flops_per_token(margs, t_cfg.seq_len), world_size=ctx.world_size,
                            peak_flops=device_peak_flops(ctx.device, cfg.metrics.peak_flops), resume_step=step)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not fsdp else contextlib.nullcontext()
    goldfish = (cfg.data.goldfish_k, cfg.data.goldfish_h) if cfg.data.goldfish else None
    sched = cfg.lr_schedule
    preemption = PreemptionHandler().install()
    step_times: list[float] = []
    try:
        while step < t_cfg.max_steps:
            t0 = time.perf_counter()
            lr = wsd_lr(step, peak_lr=cfg.optimizer.lr, max_steps=t_cfg.max_steps, warmup_steps=sched.warmup_steps,
                        decay_fraction=sched.decay_fraction, decay_shape=sched.decay_shape,
                        min_lr_ratio=sched.min_lr_ratio)
            loss, grad_norm = train_step(model, optimizer, loader, consumed_samples=consumed, lr=lr,
                                         max_grad_norm=t_cfg.max_grad_norm, autocast=autocast, goldfish=goldfish)
            step += 1
            consumed += loader.global_batch_size
            # One small all-reduce per step carries the mean loss and "someone was told to stop".
            stats = torch.stack([loss, grad_norm.to(loss.dtype),
                                 torch.tensor(float(preemption.requested), device=loss.device)])
            if dist.is_initialized():
                dist.all_reduce(stats)
                stats[:2] /= ctx.world_size
            loss_v, gnorm_v, stop_v = stats.tolist()
            stop = stop_v > 0
            compute_s = time.perf_counter() - t0
            stall = 0.0
            final = stop or step == t_cfg.max_steps
            if ck.enabled and (final or ckpt.should_save(step)) and ckpt.last_saved_step != step:
                state = get_train_state(model, optimizer, step=step, consumed_samples=consumed,
                                        model_shape=model_shape, config=config_dump)
                stall = ckpt.save(step, state, block=final)
                if not final:
                    ckpt.plan_next(step, stall, float(np.median(step_times or [compute_s])))
            step_time = time.perf_counter() - t0
            step_times = (step_times + [compute_s])[-20:]
            rec = metrics.log(step=step, loss=loss_v, lr=lr, grad_norm=gnorm_v, tokens=tokens_per_step,
                              step_time_s=step_time, ckpt_stall_s=stall)
            if ctx.is_main and (step % cfg.metrics.console_every == 0 or final or step == 1):
                mfu = f"{100 * rec['mfu']:.1f}%" if rec["mfu"] is not None else "n/a"
                logger.info("step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | mfu %s | ckpt %.3fs",
                            step, t_cfg.max_steps, loss_v, lr, gnorm_v, rec["tokens_per_s"], mfu, stall)
            if stop:
                logger.info("preempted: final checkpoint at step %d written; exiting 0", step)
                break
        ckpt.close()
    finally:
        preemption.restore()
        metrics.close()
    if dist.is_initialized():
        dist.barrier()  # nobody leaves before rank 0's final checkpoint is durable
    return 0


def run(cfg: TrainerConfig) -> int:
    """Initialise the process group, train, clean up; maps user errors to exit code 1."""
    ctx = init_distributed(cfg.training.device, cfg.parallel.backend, cfg.training.num_threads)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"%(asctime)s [rank {ctx.rank}] %(message)s", stream=sys.stderr, force=True)
    try:
        return train(cfg, ctx)
    except (CheckpointError, DataError) as e:
        logger.error("error: %s", e)
        return 1
    finally:
        destroy_distributed()


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split `--config NAME` from the `--section.key=value` overrides."""
    parser = argparse.ArgumentParser(prog="python -m workloads.trainer.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="preset under workloads/trainer/configs, or a .toml path")
    known, overrides = parser.parse_known_args(argv)
    return known.config, overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point: load the config (exit 2 on errors) and train."""
    name, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(name, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
