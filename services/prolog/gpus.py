"""GPU facts of a node: NVML on real nodes, the emulated `run/strata/gpus.json` on the local site.

The prolog refuses a node whose GPUs do not have most of their memory free (stale processes or caches
holding it), and sets vBoost when the job asks for it.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

EMULATED = "run/strata/gpus.json"
MIN_FREE = 0.90  # share of each GPU's memory that must be allocatable


@dataclass(frozen=True)
class Gpu:
    index: int
    memory_total_mib: int
    memory_used_mib: int

    @property
    def free_share(self) -> float:
        return 1 - self.memory_used_mib / self.memory_total_mib if self.memory_total_mib else 0.0


def read_gpus(root: Path) -> list[Gpu]:
    """The node's GPUs: emulated state if the root has it, else NVML; [] when the node has no GPU or driver."""
    emulated = root / EMULATED
    if emulated.exists():
        return [Gpu(g["index"], g["memory_total_mib"], g["memory_used_mib"]) for g in json.loads(emulated.read_text())]
    try:
        import pynvml  # nvidia-ml-py: present on GPU nodes
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no driver: a CPU node
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append(Gpu(i, mem.total // 2**20, mem.used // 2**20))
        return out
    finally:
        pynvml.nvmlShutdown()


def memory_problems(gpus: list[Gpu], min_free: float = MIN_FREE) -> list[str]:
    """One entry per GPU with less than `min_free` of its memory free, e.g. "GPU2 71% free".

    The figure is rounded down, so a GPU at 89.6% never reads as a passing 90%.
    """
    return [f"GPU{g.index} {math.floor(g.free_share * 100 + 1e-9)}% free" for g in gpus if g.free_share < min_free]


def set_vboost(root: Path, level: int) -> str:
    """Set vBoost on every GPU: `nvidia-smi boost-slider` on a real node, the emulated state otherwise."""
    emulated = root / EMULATED
    if emulated.exists():
        gpus = json.loads(emulated.read_text())
        for g in gpus:
            g["vboost"] = level
        emulated.write_text(json.dumps(gpus, indent=1))
        return f"vboost {level}"
    r = subprocess.run(["nvidia-smi", "boost-slider", "--vboost", str(level)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"nvidia-smi boost-slider --vboost {level} failed: {(r.stderr or r.stdout).strip()}")
    return f"vboost {level}"
