"""Training stall caused by a checkpoint: asynchronous save against a synchronous one (aim ≤ 10 %).

    .venv/bin/python bench/bench_async_ckpt.py [--dim 512 --layers 8] [--reps 3] [--steps 8]

A model of ~18 M parameters (≈ 210 MB of weights + AdamW state; --dim/--layers for more) trains on
CPU with our `train_step`.
Each rep times the same number of steps three ways, interleaved: no checkpoint, a synchronous save
(`CheckpointManager(asynchronous=False)`: copy, write, fsync, rename before training continues) and an
asynchronous one (copied and written by the background thread; the optimizer waits for the copy only),
issued after the first step. The stall of a mode = its wall time − the no-checkpoint wall time, so it
includes everything the save costs training: the snapshot, GIL and core contention with the writer
thread, and any wait for the write at the end of the window. Also reported: the blocking time the
checkpoint manager itself measures (what the metrics' ckpt_stall_s shows), which does not see contention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.trainer.components.checkpoint import CheckpointManager  # noqa: E402
from workloads.trainer.components.optimizer import build_optimizer  # noqa: E402
from workloads.trainer.components.train_state import get_train_state  # noqa: E402
from workloads.trainer.config import OptimizerConfig  # noqa: E402
from workloads.trainer.loader import ShardedBatchLoader  # noqa: E402
from workloads.trainer.model import ModelArgs, Transformer  # noqa: E402
from workloads.trainer.train import train_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="steps in each timed window")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp dir)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    margs = ModelArgs(vocab_size=8192, dim=args.dim, n_layers=args.layers, n_heads=args.dim // 64, n_kv_heads=2,
                      max_seq_len=args.seq_len)
    model = Transformer(margs)
    optimizer = build_optimizer(model, OptimizerConfig(), max_steps=1000)
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 8192, args.seq_len + 1, dtype=np.int64) for _ in range(4096)]
    loader = ShardedBatchLoader(data, rank=0, world_size=1, micro_batch_size=args.batch, grad_accum_steps=1,
                                vocab_size=8192, device=torch.device("cpu"))
    shape = margs.shape_dict()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    consumed = [0]

    def one_step() -> None:
        train_step(model, optimizer, loader, consumed_samples=consumed[0] % 4000, lr=1e-4, max_grad_norm=1.0,
                   autocast=contextlib.nullcontext(), goldfish=None)
        consumed[0] += args.batch

    def window(mode: str, rep: int) -> tuple[float, float]:
        """Wall time of `steps` steps with a save of kind `mode` after the first; and the save's blocking time."""
        manager = None if mode == "none" else CheckpointManager(root / f"{mode}{rep}", asynchronous=mode == "async")
        hook = manager.attach(optimizer) if manager is not None else None
        blocked = 0.0
        t0 = time.perf_counter()
        for i in range(args.steps):
            one_step()
            if i == 0 and manager is not None:
                state = get_train_state(model, optimizer, step=rep * 1000 + 1, consumed_samples=consumed[0],
                                        model_shape=shape, config={})
                manager.save(rep * 1000 + 1, state)
        if manager is not None:
            manager.close()  # a write still running at the end of the window counts as stall
            hook.remove()
            blocked = manager.consume_stall()  # save() itself + the optimizer's wait for the copy
        return time.perf_counter() - t0, blocked

    for _ in range(2):
        one_step()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 3  # + 2 Adam moments
    results: dict[str, list[tuple[float, float]]] = {"none": [], "sync": [], "async": []}
    for rep in range(args.reps):
        for mode in ("none", "sync", "async") if rep % 2 == 0 else ("async", "sync", "none"):
            results[mode].append(window(mode, rep))
        base = results["none"][-1][0]
        print(f"rep {rep}: none {base:.2f}s  sync {results['sync'][-1][0]:.2f}s "
              f"(blocked {results['sync'][-1][1]:.2f}s)  async {results['async'][-1][0]:.2f}s "
              f"(blocked {results['async'][-1][1]:.3f}s)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    stall = {m: statistics.median(results[m][i][0] - results["none"][i][0] for i in range(args.reps))
             for m in ("sync", "async")}
    blocked = {m: statistics.median(b for _, b in results[m]) for m in ("sync", "async")}
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "checkpoint_mb": round(state_bytes / 2**20), "steps_per_window": args.steps,
        "step_s": round(statistics.median(r[0] for r in results["none"]) / args.steps, 3),
        "sync_stall_s": round(stall["sync"], 3), "async_stall_s": round(stall["async"], 3),
        "sync_blocking_s": round(blocked["sync"], 3), "async_blocking_s": round(blocked["async"], 3),
        "async_over_sync_stall": round(stall["async"] / stall["sync"], 3),
        "async_over_sync_blocking": round(blocked["async"] / blocked["sync"], 3)}, indent=2))


if __name__ == "__main__":
    main()
