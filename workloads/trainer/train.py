"""The training loop: `python -m workloads.trainer.train --config tiny [--section.key=value ...]`.

Also runs under torchrun or srun (several ranks: DDP or FSDP2). Resumes from <checkpoint dir>/latest,
writes a checkpoint every `checkpoint.interval` steps without stopping, and on SIGUSR1/SIGTERM finishes
the step, writes a final checkpoint and exits 0. Exit codes: 0 done or preempted, 1 runtime error
(data, checkpoint), 2 bad configuration (also a device or dataset this machine lacks: refused before any write).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .components.checkpoint import CheckpointManager
from .components.lr_schedule import build_lr_schedule
from .components.metrics import MetricsLogger
from .components.optimizer import build_optimizer
from .components.signals import PreemptionHandler
from .components.train_state import CheckpointError, get_train_state, load_train_state
from .config import ConfigError, TrainerConfig, load_config
from .data import DataError
from .loader import ShardedBatchLoader, build_loader
from .model import ModelArgs, Transformer, flops_per_token
from .parallelize import (
    DistContext,
    ReplicaMismatchError,
    check_replicas_agree,
    destroy_distributed,
    init_distributed,
    maybe_enable_amp,
    maybe_no_sync,
    parallelize_model,
    uses_fsdp,
)
from .preflight import check_run

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
               consumed_samples: int, lr: float, max_grad_norm: float, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm) as tensors."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=loader.device)
    for micro in range(loader.accum):
        x, y = loader.get(consumed_samples, micro)  # (B, T) each; y is -100 where Goldfish drops a label
        # Gradients are reduced across ranks only on the last micro-batch (its backward syncs them).
        with maybe_no_sync(model, sync=micro == loader.accum - 1):
            with autocast:
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
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything from the config, resumes, and runs steps; `train()` loops until done or preempted.

    The Trainer is the one place that holds the whole config: each component gets its own section (the
    checkpointer [checkpoint], the optimizer [optimizer], the schedule [lr_schedule], the metrics logger
    [metrics], the loader [data] with [training]'s batch shape, parallelize [parallel] and [training]) and the
    runtime facts it needs (run dir, rank, world size, device), by name.

    Construction reads the latest checkpoint before writing anything, so a checkpoint that does not fit
    (CheckpointError) leaves the run directory untouched.
    """

    def __init__(self, cfg: TrainerConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        t_cfg = cfg.training
        self.run_dir = Path(cfg.job.run_dir)
        self.margs = cfg.model_args()
        self.model_shape = {k: v for k, v in self.margs.shape_dict().items() if k != "max_seq_len"}
        seed_everything(cfg.job.seed)
        self.fsdp = uses_fsdp(cfg.parallel, world_size=ctx.world_size)
        model = build_model(self.margs, ctx.device, on_meta=self.fsdp)
        self.model = parallelize_model(model, cfg.parallel, t_cfg, device=ctx.device, world_size=ctx.world_size)
        if self.fsdp:
            finish_meta_init(self.model, ctx.device)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, max_steps=t_cfg.max_steps)
        self.lr_schedule = build_lr_schedule(cfg.lr_schedule, peak_lr=cfg.optimizer.lr, max_steps=t_cfg.max_steps)
        self.ckpt = CheckpointManager(cfg.checkpoint, run_dir=self.run_dir, rank=ctx.rank)
        self.ckpt.attach(self.optimizer)  # a background snapshot finishes before the weights change
        self.step, self.consumed = 0, 0
        # Verified first, by all ranks together; a damaged one is refused or skipped (checkpoint.on_damaged).
        latest = self.ckpt.resume_path()
        if latest is not None:
            # FSDP2 reads a sharded checkpoint shard by shard (each rank only its own), anything else whole.
            state = CheckpointManager.read(latest, shards=not self.fsdp, verify=False)
            resumed = load_train_state(state, self.model, self.optimizer,
                                       model_shape=self.model_shape, path=latest)
            self.step, self.consumed = resumed["step"], resumed["consumed_samples"]
            self.ckpt.reset_schedule(self.step)
            logger.info("resumed from %s at step %d (%d samples consumed)", latest, self.step, self.consumed)

        self.config_dump = cfg.model_dump(mode="json")
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(
                json.dumps({**self.config_dump, "resolved_model": self.margs.shape_dict()}, indent=2))
        self.loader = build_loader(cfg.data, t_cfg, seed=cfg.job.seed, run_dir=self.run_dir, rank=ctx.rank,
                                   world_size=ctx.world_size, vocab_size=self.margs.vocab_size, device=ctx.device)
        self.tokens_per_step = self.loader.global_batch_size * t_cfg.seq_len
        self.metrics = MetricsLogger(cfg.metrics, run_dir=self.run_dir,
                                     flops_per_token=flops_per_token(self.margs, t_cfg.seq_len),
                                     world_size=ctx.world_size, device=ctx.device, enabled=ctx.is_main,
                                     resume_step=self.step)
        self.autocast = maybe_enable_amp(t_cfg, device=ctx.device, fsdp=self.fsdp)
        self.preemption = PreemptionHandler()
        self._compute_times: list[float] = []

    @property
    def done(self) -> bool:
        """True once max_steps optimizer steps have been taken (across all runs of this job)."""
        return self.step >= self.cfg.training.max_steps

    def train_one_step(self) -> tuple[dict, bool]:
        """Step, agree on preemption, checkpoint if due, log; returns (metrics record, stop requested)."""
        t0 = time.perf_counter()
        lr = self.lr_schedule(self.step)
        loss, grad_norm = train_step(self.model, self.optimizer, self.loader, consumed_samples=self.consumed, lr=lr,
                                     max_grad_norm=self.cfg.training.max_grad_norm, autocast=self.autocast)
        self.step += 1
        self.consumed += self.loader.global_batch_size
        # One small all-reduce per step carries the mean loss, "someone was told to stop" and rank 0's
        # "a checkpoint is due" (with interval='auto' only rank 0 measures the save cost).
        due = self.ctx.is_main and self.ckpt.should_save(self.step)
        stats = torch.tensor([0.0, 0.0, float(self.preemption.requested), float(due)], device=loss.device)
        stats[0], stats[1] = loss, grad_norm
        if dist.is_initialized():
            dist.all_reduce(stats)
            stats[:2] /= self.ctx.world_size
        loss_v, gnorm_v, stop_v, due_v = stats.tolist()
        stop = stop_v > 0
        compute_s = time.perf_counter() - t0
        self._compute_times = (self._compute_times + [compute_s])[-20:]
        self.maybe_checkpoint(final=stop or self.done, due=due_v > 0)
        record = self.metrics.log(step=self.step, loss=loss_v, lr=lr, grad_norm=gnorm_v,
                                  tokens=self.tokens_per_step, step_time_s=time.perf_counter() - t0,
                                  ckpt_stall_s=self.ckpt.consume_stall())
        return record, stop

    def maybe_checkpoint(self, *, final: bool, due: bool) -> None:
        """Save when due (asynchronously) or final (blocking: the process is about to exit)."""
        if not self.ckpt.enabled or self.ckpt.last_saved_step == self.step or not (final or due):
            return
        state = get_train_state(self.model, self.optimizer, step=self.step, consumed_samples=self.consumed,
                                model_shape=self.model_shape, config=self.config_dump)
        self.ckpt.save(self.step, state, block=final, step_time_s=float(np.median(self._compute_times)))

    def train(self) -> int:
        """Train to max_steps or until preempted; returns the exit code (0)."""
        max_steps = self.cfg.training.max_steps
        if self.done:
            logger.info("already trained %d/%d steps: nothing to do", self.step, max_steps)
            return 0
        self.preemption.install()
        try:
            while not self.done:
                rec, stop = self.train_one_step()
                self.metrics.log_console(rec, max_steps=max_steps, last=self.done or stop)
                if stop:
                    logger.info("preempted: final checkpoint at step %d written; exiting 0", self.step)
                    break
            self.ckpt.close()
        finally:
            self.preemption.restore()
            self.metrics.close()
        if dist.is_initialized():
            if not self.fsdp:
                checksum = check_replicas_agree(self.model)
                logger.info("weights agree across %d ranks (checksum %.17g)", self.ctx.world_size, checksum)
            dist.barrier()  # nobody leaves before rank 0's final checkpoint is durable
        return 0


def setup_logging(rank: int) -> None:
    """Trainer log lines to stderr, prefixed with the rank; INFO on rank 0, warnings elsewhere.

    Configures the `workloads.trainer` logger only (not the root logger), so embedding the trainer
    leaves the host application's logging alone.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s"))
    for old in [h for h in logger.handlers if getattr(h, "_trainer", False)]:
        logger.removeHandler(old)
    handler._trainer = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def run(cfg: TrainerConfig) -> int:
    """Check the config against this machine, initialise the process group, train, clean up.

    A config this machine cannot run (device, data, paths) exits 2 before anything is written; errors
    found while running (data, checkpoint, replicas) exit 1.
    """
    try:
        check_run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = init_distributed(cfg.training, cfg.parallel)
    setup_logging(ctx.rank)
    try:
        return Trainer(cfg, ctx).train()
    except (CheckpointError, DataError, ReplicaMismatchError) as e:
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


def exit_now(code: int) -> None:
    """Leave the process without interpreter finalization, once everything is flushed and durable.

    By now the final checkpoint is committed, metrics are closed and the process group is destroyed. What is
    left is finalization, where torch's C++ objects (gloo's threads, the TCPStore client) are torn down in no
    set order; a rank now and then aborts there ("terminate called without an active exception", seen as
    exit 134 of one task in CI, which fails the whole srun step; pytorch/pytorch#179291 describes the same
    class of abort). Nothing of ours depends on finalization, so skip it.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say to it
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
