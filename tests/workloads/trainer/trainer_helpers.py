"""Helpers for the trainer tests: small-run overrides, subprocess runs, metrics reading."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def small_run(run_dir: Path, prefix: str, **extra) -> list[str]:
    """Overrides for a fast tiny run: 32-token samples, batch 4, checkpoint every 10 steps."""
    opts = {"job.run_dir": str(run_dir), "data.paths": json.dumps([prefix]), "training.seq_len": 32,
            "training.micro_batch_size": 4, "training.max_steps": 20, "checkpoint.interval": 10,
            "training.num_threads": 1, **extra}
    return [f"--{k}={v}" for k, v in opts.items()]


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_trainer(args: list[str], *, env: dict[str, str] | None = None, log: Path | None = None
                  ) -> subprocess.Popen:
    """`python -m workloads.trainer.train --config tiny ARGS` in the background."""
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "workloads.trainer.train", "--config", "tiny", *args],
                            cwd=REPO, env=env or trainer_env(), stdout=out, stderr=subprocess.STDOUT, text=True)


def run_trainer(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the trainer to completion; returns the completed process (output in .stdout)."""
    return subprocess.run([sys.executable, "-m", "workloads.trainer.train", "--config", "tiny", *args], cwd=REPO,
                          env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every line of a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def wait_for(predicate, timeout: float, interval: float = 0.005) -> bool:
    """Poll `predicate` until true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


_LAUNCHES = itertools.count()


def start_ranks(run_dir: Path, args: list[str], world: int) -> list[subprocess.Popen]:
    """All ranks of a `world`-process gloo run on this host, rendezvous as torchrun would set it up."""
    # distinct per run dir and launch: parallel sessions, and a relaunch after a kill, do not collide
    port = 29500 + (zlib.crc32(str(run_dir).encode()) + 7 * next(_LAUNCHES)) % 2000
    n = str(world)
    return [subprocess.Popen([sys.executable, "-m", "workloads.trainer.train", "--config", "tiny", *args], cwd=REPO,
                             env=trainer_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=n, LOCAL_WORLD_SIZE=n,
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]


def start_two_ranks(run_dir: Path, args: list[str]) -> list[subprocess.Popen]:
    """Both ranks of a 2-process gloo run on this host."""
    return start_ranks(run_dir, args, 2)


def checkpointer(directory: Path, **options):
    """A CheckpointManager writing into `directory` (checkpoint.dir), with [checkpoint] `options`."""
    from workloads.trainer.components.checkpoint import CheckpointManager
    from workloads.trainer.config import CheckpointConfig

    return CheckpointManager(CheckpointConfig(dir=str(directory), **options), run_dir=directory)


def train_batch(model, opt) -> None:
    """One optimizer step of a small model (vocab 64) on a random batch of 2 × 16 tokens."""
    import torch

    x = torch.randint(0, 64, (2, 16))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    opt.zero_grad()


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    """Flip one bit of the file at `path`, in place (what a bad disk, cable or DIMM does)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def offset_of(path: Path, tensor) -> int:
    """Offset in the file at `path` of the middle of `tensor`'s raw bytes (whatever the file's format)."""
    import torch

    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = path.read_bytes().find(raw)
    assert at >= 0, f"{path.name} does not hold the tensor's bytes"
    return at + len(raw) // 2


def flip_digit(path: Path, after: bytes) -> None:
    """Change the first digit after `after` in a text file by one bit (3 -> 2, 8 -> 9): still valid JSON."""
    raw = path.read_bytes()
    at = raw.index(after) + len(after)
    while not chr(raw[at]).isdigit():
        at += 1
    flip_bit(path, at)
