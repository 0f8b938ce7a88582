"""The checks a vetting profile names; each measures one figure on this node and compares it to its threshold.

On the local site the node root may hold `run/strata/perf.json` (emulated hardware speed, e.g.
`{"matmul": 0.01}` for a node a hundred times slower): measured figures are scaled by it, the way
`run/strata/gpus.json` stands for the GPUs' state.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from services.prolog.gpus import memory_problems, read_gpus
from services.vetting.profile import AllReduce, DiskWrite, EnvVars, GpuMemoryFree, Matmul

PERF = "run/strata/perf.json"


@dataclass(frozen=True)
class Result:
    node: str
    check: str
    ok: bool
    value: float | None
    threshold: float | None
    unit: str = ""
    detail: str = ""

    def line(self) -> str:
        return f"{self.node} {self.figure()}"

    def figure(self) -> str:
        """The check and its figure against the threshold: `matmul: 3.5e-06 TFLOP/s < 0.001 (cpu)`."""
        if self.value is None:
            return f"{self.check}: {self.detail}"
        cmp = ">=" if self.ok else "<"
        return f"{self.check}: {self.value:.4g} {self.unit} {cmp} {self.threshold:g}" + (
            f" ({self.detail})" if self.detail else "")


def _perf(root: Path, key: str) -> float:
    try:
        return float(json.loads((root / PERF).read_text()).get(key, 1.0))
    except (FileNotFoundError, ValueError):
        return 1.0


def _device():
    import torch

    return torch.device("cuda", int(os.environ.get("SLURM_LOCALID", 0)) % max(1, torch.cuda.device_count())) \
        if torch.cuda.is_available() else torch.device("cpu")


def gpu_memory_free(c: GpuMemoryFree, node: str, root: Path) -> Result:
    gpus = read_gpus(root)
    if not gpus:
        return Result(node, c.check, True, None, None, detail="no GPUs")
    bad = memory_problems(gpus, c.min_free)
    worst = min(g.free_share for g in gpus)
    return Result(node, c.check, not bad, worst * 100, c.min_free * 100, "% free", ", ".join(bad))


def matmul(c: Matmul, node: str, root: Path) -> Result:
    import torch

    dev = _device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = c.cuda_size if dev.type == "cuda" else c.size
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    (a @ b).sum().item()  # warm up (kernels, allocator)
    t0 = time.perf_counter()
    for _ in range(c.iters):
        out = a @ b
    out.sum().item()  # synchronise
    dt = time.perf_counter() - t0
    tflops = 2 * n**3 * c.iters / dt / 1e12 * _perf(root, "matmul")
    need = getattr(c.min_tflops, dev.type)
    return Result(node, c.check, tflops >= need, tflops, need, "TFLOP/s", dev.type)


def allreduce(c: AllReduce, node: str, root: Path) -> Result:
    """Bus bandwidth of an all-reduce across every task of the job (torch.distributed is set up by the caller)."""
    import torch
    import torch.distributed as dist

    dev = _device()
    n = dist.get_world_size() if dist.is_initialized() else 1
    need = getattr(c.min_busbw_gbps, dev.type)
    if n == 1:
        return Result(node, c.check, True, None, None, detail="single task: nothing to all-reduce")
    x = torch.ones(int(c.size_mb * 2**20 / 4), device=dev, dtype=torch.float32)
    dist.all_reduce(x)  # warm up (connections)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(c.iters):
        dist.all_reduce(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / c.iters
    busbw = x.numel() * 4 * 2 * (n - 1) / n / dt / 1e9 * _perf(root, "allreduce")  # nccl-tests' busbw
    return Result(node, c.check, busbw >= need, busbw, need, "GB/s", f"{n} tasks, {dist.get_backend()}")


def disk_write(c: DiskWrite, node: str, root: Path) -> Result:
    target = root / c.path / f".strata-vet-{os.getpid()}"
    block = os.urandom(2**20)
    t0 = time.perf_counter()
    try:
        with open(target, "wb") as f:
            for _ in range(c.size_mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        dt = time.perf_counter() - t0
    finally:
        target.unlink(missing_ok=True)
    mbps = c.size_mb / dt * _perf(root, "disk")
    return Result(node, c.check, mbps >= c.min_mbps, mbps, c.min_mbps, "MB/s", str(root / c.path))


def env(c: EnvVars, node: str, root: Path) -> Result:
    missing = [v for v in c.required if not os.environ.get(v)]
    return Result(node, c.check, not missing, None, None,
                  detail="missing " + ", ".join(missing) if missing else f"{len(c.required)} variables set")


RUN = {"gpu_memory_free": gpu_memory_free, "matmul": matmul, "allreduce": allreduce,
       "disk_write": disk_write, "env": env}
