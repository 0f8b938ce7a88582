"""Training-step throughput: our Trainer step against a minimal plain-torch loop of the same model shape.

    .venv/bin/python bench/bench_train_step.py [--reps 8] [--steps 4] [--threads N] [--seq-len 128] [--batch 8]

Ours = `Trainer.train_one_step()` exactly as `python -m workloads.trainer.train` runs it: batches read
from the tokenized sample through the sharded loader, the WSD schedule, gradient clipping, the per-step
stats sync, preemption flag, a JSONL metrics line (checkpoints off: bench_async_ckpt.py measures those).
Plain = a separately written nanoGPT-style model of the same shape (same parameter count, asserted) and
the usual loop: forward, cross-entropy, backward, clip_grad_norm_, AdamW step, zero_grad, loss.item(), on
random token batches prepared in advance. Both run in the same process, interleaved: one step of each in
turn (A,B then B,A), reps × steps pairs; each step is timed by wall clock and by process CPU time.
Reported: tokens/s of each (median and interquartile range), the ratio ours / plain of each step pair
(median, IQR, min-max; aim ≥ 0.95), of the best steps, and of the CPU-time medians. The run dir (a
temporary directory: config, metrics, the tokenized sample) is removed at the end, also on an error.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.trainer.config import load_config  # noqa: E402
from workloads.trainer.parallelize import init_distributed  # noqa: E402
from workloads.trainer.train import Trainer  # noqa: E402


class PlainBlock(nn.Module):
    def __init__(self, d: int, nh: int, nkv: int, ffn: int):
        super().__init__()
        self.nh, self.nkv, self.hs = nh, nkv, d // nh
        self.n1, self.n2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.qn, self.kn = nn.Parameter(torch.ones(self.hs)), nn.Parameter(torch.ones(self.hs))
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * nkv * self.hs, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, ffn, bias=False), nn.Linear(ffn, d, bias=False)
        self.a = nn.Parameter(torch.tensor([0.2, -1.0]))  # xIELU (a_p, a_n)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = F.rms_norm(x, (C,), self.n1, 1e-5)
        q = self.q(h).view(B, T, self.nh, self.hs).transpose(1, 2)
        k, v = self.kv(h).view(B, T, 2, self.nkv, self.hs).permute(2, 0, 3, 1, 4)
        q, k = F.rms_norm(q, (self.hs,), self.qn, 1e-5), F.rms_norm(k, (self.hs,), self.kn, 1e-5)
        rot = lambda t: t * cos + torch.cat((-t[..., self.hs // 2:], t[..., :self.hs // 2]), -1) * sin  # noqa: E731
        y = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True, enable_gqa=True)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, C))
        u = self.up(F.rms_norm(x, (C,), self.n2, 1e-5))
        ap, an = F.softplus(self.a[0]), 0.5 + F.softplus(self.a[1])
        act = torch.where(u > 0, ap * u * u + 0.5 * u, an * (torch.expm1(u.clamp(max=-1e-6)) - u) + 0.5 * u)
        return x + self.down(act)


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, nh: int, nkv: int, ffn: int, T: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(PlainBlock(d, nh, nkv, ffn) for _ in range(layers))
        self.norm = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(d, vocab, bias=False)
        hs = d // nh
        f = torch.outer(torch.arange(T).float(), 1.0 / 10000 ** (torch.arange(0, hs, 2).float() / hs))
        self.register_buffer("cos", torch.cat((f, f), -1).cos())
        self.register_buffer("sin", torch.cat((f, f), -1).sin())

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return self.head(F.rms_norm(x, (x.shape[-1],), self.norm, 1e-5))


def spread(xs: list[float], fmt: str) -> str:
    """median, interquartile range and min-max of the samples."""
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return f"{q2:>9{fmt}}  {f'{q1:{fmt}}-{q3:{fmt}}':>13}  {f'{min(xs):{fmt}}-{max(xs):{fmt}}':>13}"


def run(args: argparse.Namespace, tmp: Path) -> dict:
    """Both contenders, interleaved, with run dir `tmp`: tokens/s per step, by wall clock and by CPU time."""
    total_steps = 2 + args.reps * args.steps
    cfg = load_config(args.config, [f"--job.run_dir={tmp}", f"--training.seq_len={args.seq_len}",
                                    f"--training.micro_batch_size={args.batch}", f"--training.max_steps={total_steps}",
                                    "--checkpoint.enabled=false", "--training.device=cpu",
                                    *([f"--training.num_threads={args.threads}"] if args.threads else [])])
    ctx = init_distributed(cfg.training, cfg.parallel)
    trainer = Trainer(cfg, ctx)
    try:
        m = cfg.model_args()
        torch.manual_seed(0)
        plain = PlainGPT(m.vocab_size, m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, args.seq_len)
        ours_params = sum(p.numel() for p in trainer.model.parameters())
        assert sum(p.numel() for p in plain.parameters()) == ours_params, "plain model must have the same shape"
        opt = torch.optim.AdamW(plain.parameters(), lr=cfg.optimizer.lr, betas=(0.9, 0.95), weight_decay=0.1)
        batches = [torch.randint(0, m.vocab_size, (args.batch, args.seq_len + 1)) for _ in range(8)]

        def plain_step(i: int) -> None:
            b = batches[i % len(batches)]
            loss = F.cross_entropy(plain(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # a loop that logs its loss syncs once per step too

        tokens = args.batch * args.seq_len
        ours_step = lambda i: trainer.train_one_step()  # noqa: E731
        for i in range(2):  # warm-up both
            ours_step(i)
            plain_step(i)
        # Interleaved: single steps alternate (order swapped every pair) so both see the same machine load;
        # each step timed by wall clock and by this process's CPU time (robust when other jobs share the cores).
        wall = {"ours": [], "plain": []}
        cpu = {"ours": [], "plain": []}
        for rep in range(args.reps * args.steps):
            order = [("ours", ours_step), ("plain", plain_step)]
            for name, fn in order if rep % 2 == 0 else order[::-1]:
                w0, c0 = time.perf_counter(), time.process_time()
                fn(rep)
                wall[name].append(tokens / (time.perf_counter() - w0))
                cpu[name].append(tokens / (time.process_time() - c0))
    finally:
        trainer.ckpt.close()
        trainer.metrics.close()
    return {"model": f"{args.config}: {ours_params / 1e6:.2f} M params", "tokens": tokens, "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="steps per rep (each timed on its own)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--config", default="tiny")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        r = run(args, Path(tmp))
    wall, cpu = r["wall"], r["cpu"]
    pairs = [o / p for o, p in zip(wall["ours"], wall["plain"], strict=True)]
    print(f"{r['model']}, {r['tokens']:,} tokens per step, torch threads: {torch.get_num_threads()}, {len(pairs)} step "
          "pairs (one step of each in turn, order swapped every pair)")
    print(f"{'':<26}{'median':>9}  {'IQR':>13}  {'min-max':>13}")
    print(f"{'ours tok/s':<26}{spread(wall['ours'], ',.0f')}")
    print(f"{'plain tok/s':<26}{spread(wall['plain'], ',.0f')}")
    print(f"{'ratio ours/plain per pair':<26}{spread(pairs, '.3f')}   (aim >= 0.95)")
    print(f"ratio of the best steps {max(wall['ours']) / max(wall['plain']):.3f}; ratio of the CPU-time medians "
          f"{statistics.median(cpu['ours']) / statistics.median(cpu['plain']):.3f}")
    print(f"load average (1 min) before/after: {load:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
