"""Training stall caused by a checkpoint: asynchronous save against a synchronous one (aim ≤ 10 %), and what
checksumming every file (the manifest, see components/manifest.py) adds to either.

    .venv/bin/python bench/bench_async_ckpt.py [--dim 512 --layers 8] [--reps 5] [--steps 6] [--threads 1]

A model of ~18 M parameters (≈ 210 MB of weights + AdamW state; --dim/--layers for more) trains on
CPU with our `train_step`.
Each rep times the same number of steps five ways, interleaved (the order reversed every other rep): no
checkpoint; a synchronous save (`checkpoint.asynchronous=false`: copy, write, fsync, hash, rename
before training continues) and an asynchronous one (copied, written and hashed by the background thread;
the optimizer waits for the copy only), each with hashing on and off ("off": the checksum function replaced
by a no-op, everything else identical), issued after the first step. Reported, as median [min – max] over
the reps:
- wall stall: the mode's wall time − the no-checkpoint wall time of the same rep, i.e. everything the save
  costs training (snapshot, GIL and core contention with the writer, a wait for the write at the end);
- blocking: what the checkpoint manager itself measures (the metrics' ckpt_stall_s), blind to contention;
- write: the background writer's time (async), which is where the hashing runs;
- step time while the writer runs (async windows, steps after the save whose start found the writer still
  busy) against the step time of the no-checkpoint windows.
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

from workloads.trainer.components import manifest  # noqa: E402
from workloads.trainer.components.checkpoint import CheckpointManager  # noqa: E402
from workloads.trainer.components.optimizer import build_optimizer  # noqa: E402
from workloads.trainer.components.train_state import get_train_state  # noqa: E402
from workloads.trainer.config import CheckpointConfig, OptimizerConfig  # noqa: E402
from workloads.trainer.loader import ShardedBatchLoader  # noqa: E402
from workloads.trainer.model import ModelArgs, Transformer  # noqa: E402
from workloads.trainer.train import train_step  # noqa: E402

MODES = ("none", "sync", "sync-nohash", "async", "async-nohash")


HASHED: list[tuple[float, float, int]] = []  # (wall s, CPU s of the hashing thread, bytes) per file hashed


def timed_checksum(path: Path) -> str:
    """manifest.file_checksum, timed: its thread's CPU time does not count the other jobs on the machine."""
    w0, c0 = time.perf_counter(), time.thread_time()
    digest = REAL_CHECKSUM(path)
    HASHED.append((time.perf_counter() - w0, time.thread_time() - c0, path.stat().st_size))
    return digest


REAL_CHECKSUM = manifest.file_checksum


@contextlib.contextmanager
def hashing(enabled: bool):
    """Checksums as written (enabled, timed) or replaced by a constant: the cost of hashing, nothing else."""
    manifest.file_checksum = timed_checksum if enabled else (lambda path: "00000000")
    try:
        yield
    finally:
        manifest.file_checksum = REAL_CHECKSUM


def spread(values: list[float], digits: int = 3) -> list[float]:
    """[median, min, max] of `values`, rounded."""
    return [round(statistics.median(values), digits), round(min(values), digits), round(max(values), digits)]


def show(cell: list[float] | None) -> str:
    return "-" if cell is None else f"{cell[0]:.3f} [{cell[1]:.3f} – {cell[2]:.3f}]"


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
                   autocast=contextlib.nullcontext())
        consumed[0] += args.batch

    def window(mode: str, rep: int) -> dict:
        """`steps` steps with a save of kind `mode` after the first: wall, blocking, write and step times."""
        manager = None if mode == "none" else CheckpointManager(
            CheckpointConfig(dir=str(root / f"{mode}{rep}"), asynchronous="async" in mode), run_dir=root)
        hook = manager.attach(optimizer) if manager is not None else None
        steps: list[tuple[float, bool]] = []  # (seconds, the writer was busy when the step began), after the save
        blocked = 0.0
        with hashing("nohash" not in mode):
            t0 = time.perf_counter()
            for i in range(args.steps):
                busy = manager is not None and manager._thread is not None and manager._thread.is_alive()
                ts = time.perf_counter()
                one_step()
                if i > 0:
                    steps.append((time.perf_counter() - ts, busy))
                if i == 0 and manager is not None:
                    state = get_train_state(model, optimizer, step=rep * 1000 + 1, consumed_samples=consumed[0],
                                            model_shape=shape, config={})
                    manager.save(rep * 1000 + 1, state)
            if manager is not None:
                manager.close()  # a write still running at the end of the window counts as stall
                hook.remove()
                blocked = manager.consume_stall()  # save() itself + the optimizer's wait for the copy
            wall = time.perf_counter() - t0
        return {"wall": wall, "blocked": blocked, "write": manager.last_write_s if manager else 0.0, "steps": steps}

    for _ in range(2):
        one_step()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 3  # + 2 Adam moments
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(args.reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            results[mode].append(window(mode, rep))
        base = results["none"][-1]["wall"]
        print(f"rep {rep}: none {base:.2f}s  " + "  ".join(
            f"{m} {results[m][-1]['wall']:.2f}s (blocked {results[m][-1]['blocked']:.3f}s)" for m in MODES[1:]),
            flush=True)
    shutil.rmtree(root, ignore_errors=True)

    def stalls(mode: str) -> list[float]:
        return [results[mode][i]["wall"] - results["none"][i]["wall"] for i in range(args.reps)]

    quiet = [s for r in results["none"] for s, _ in r["steps"]]
    report: dict = {
        "threads": torch.get_num_threads(), "reps": args.reps,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "checkpoint_mb": round(state_bytes / 2**20), "steps_per_window": args.steps,
        "step_s_no_checkpoint": spread(quiet)}
    for mode in MODES[1:]:
        report[mode] = {"wall_stall_s": spread(stalls(mode)),
                        "blocking_s": spread([r["blocked"] for r in results[mode]])}
        if "async" in mode:
            busy = [s for r in results[mode] for s, during in r["steps"] if during]
            report[mode]["write_s"] = spread([r["write"] for r in results[mode]])
            report[mode]["steps_while_writing"] = len(busy)
            if busy:
                report[mode]["step_s_while_writing"] = spread(busy)
                report[mode]["step_while_writing_over_quiet"] = round(
                    statistics.median(busy) / statistics.median(quiet), 2)
    def paired(mode: str, key: str) -> dict:  # hash on − off within each rep (same load, next to each other)
        return spread([a[key] - b[key] for a, b in zip(results[mode], results[f"{mode}-nohash"], strict=True)])

    report["hashing_adds"] = {"sync_blocking_s": paired("sync", "blocked"), "async_write_s": paired("async", "write"),
                              "async_wall_s": paired("async", "wall")}
    per_save = len(HASHED) / (2 * args.reps)  # files hashed per checkpoint (sync and async, hash on)
    wall_s, cpu_s, nbytes = (sum(h[i] for h in HASHED) / (2 * args.reps) for i in range(3))
    report["hash_per_checkpoint"] = {"files": per_save, "mb": round(nbytes / 2**20), "wall_s": round(wall_s, 3),
                                     "cpu_s": round(cpu_s, 3), "gb_per_cpu_s": round(nbytes / cpu_s / 1e9, 2)}
    report["async_over_sync_blocking"] = round(report["async"]["blocking_s"][0]
                                               / report["sync"]["blocking_s"][0], 4)
    print(f"\n{'mode':12} {'wall stall s':24} {'blocking s':24} {'write s':24} {'step s while writing':24}")
    for mode in MODES[1:]:
        r = report[mode]
        print(f"{mode:12} {show(r['wall_stall_s']):24} {show(r['blocking_s']):24} {show(r.get('write_s')):24} "
              f"{show(r.get('step_s_while_writing')):24}")
    print(f"{'none':12} {'':74} {show(report['step_s_no_checkpoint']):24}")
    h = report["hash_per_checkpoint"]
    print(f"hashing per checkpoint: {h['files']:.0f} files, {h['mb']} MB, {h['cpu_s']:.3f} CPU s "
          f"({h['gb_per_cpu_s']} GB per CPU second), {h['wall_s']:.3f} s wall")
    print("hashing adds (on − off, paired by rep): " + ", ".join(f"{k} {show(v)}"
                                                                for k, v in report["hashing_adds"].items()))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
