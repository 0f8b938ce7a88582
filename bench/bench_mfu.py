"""MFU of a preset on this machine's device, trained exactly as `python -m workloads.trainer.train` trains it.

    .venv/bin/python bench/bench_mfu.py                       # 1b, bf16, torch.compile, one GPU (the issue's figure)
    .venv/bin/python bench/bench_mfu.py --config tiny --device cpu --steps 6 --warmup 2   # smoke run, no GPU

Writes a synthetic Megatron dataset (uniform random token ids over the model's vocabulary, int32: the 1b
preset's 131k vocabulary does not fit uint16) big enough for the run, then runs the trainer in a
subprocess with checkpoints off and reads `metrics.jsonl`. Reported: median tokens/s per device and MFU
over the steps after `--warmup` (compile and allocator warm-up), with the device and the peak FLOP/s the
MFU is taken against. Random tokens cost the same FLOPs as text: MFU does not depend on the data.
Extra `--section.key=value` arguments go to the trainer (e.g. `--training.micro_batch_size=8`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workloads.trainer.config import ConfigError, load_config  # noqa: E402
from workloads.trainer.data.indexed import IndexedDatasetWriter  # noqa: E402
from workloads.trainer.model.args import PRESETS  # noqa: E402


def write_random_dataset(prefix: Path, vocab: int, tokens: int, doc_len: int, seed: int = 0) -> None:
    """`tokens` uniform random ids in [0, vocab) as documents of `doc_len` tokens."""
    rng = np.random.default_rng(seed)
    n_docs = -(-tokens // doc_len)
    with IndexedDatasetWriter(prefix, np.int32) as w:
        for i in range(0, n_docs, 256):
            k = min(256, n_docs - i)
            w.add_documents(rng.integers(0, vocab, k * doc_len, dtype=np.int32), np.full(k, doc_len, np.int64))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="1b")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the median (compile, allocator)")
    p.add_argument("--keep", type=Path, default=None, help="run dir to keep (default: a temporary one)")
    args, overrides = p.parse_known_args()
    if args.warmup >= args.steps:
        p.error("--warmup must be smaller than --steps")

    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    margs = PRESETS[cfg.model.preset]
    vocab = cfg.model.vocab_size or margs.vocab_size
    t = cfg.training
    need = (args.steps + 2) * t.micro_batch_size * t.grad_accum_steps * (t.seq_len + 1)

    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        prefix = Path(tmp) / "random"
        write_random_dataset(prefix, vocab, need * 2, doc_len=t.seq_len * 2)
        cmd = [sys.executable, "-m", "workloads.trainer.train", "--config", args.config, *overrides,
               f"--data.paths=['{prefix}']", f"--training.max_steps={args.steps}",
               f"--training.device={args.device}", "--checkpoint.enabled=false",
               f"--job.run_dir={run_dir}", "--metrics.console_every=5", "--lr_schedule.warmup_steps=1"]
        print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if r.returncode != 0:
            print(f"trainer exited {r.returncode}", file=sys.stderr)
            return r.returncode
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["step"] > args.warmup]
    tps = statistics.median(r["tokens_per_s_per_device"] for r in timed)
    mfus = [r["mfu"] for r in timed if r["mfu"] is not None]
    device = "cpu"
    if args.device == "cuda":
        import torch
        device = torch.cuda.get_device_name(0)
    print(f"\n{args.config} on {device}: {len(timed)} steps after {args.warmup} warm-up, "
          f"micro batch {t.micro_batch_size} x accum {t.grad_accum_steps} x seq {t.seq_len}, {t.mixed_precision}, "
          f"compile {t.compile}")
    print(f"tokens/s per device (median): {tps:,.0f}")
    if mfus:
        print(f"MFU (median): {100 * statistics.median(mfus):.1f} %  (best {100 * max(mfus):.1f} %)")
    else:
        print("MFU: n/a (no peak FLOP/s known for this device; set --metrics.peak_flops=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
