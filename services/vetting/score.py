"""`strata score -- CMD`: run a command, sample how much of the node it uses, and print a compact score.

Sampled every `interval` seconds: CPU seconds of the command's process tree and host CPU busy share
(/proc), peak resident memory of the tree, GPU utilisation and memory (NVML, when present). After the run,
the trainer's metrics JSONL (`--metrics`, default `$STRATA_METRICS`) gives tokens/s and MFU (medians over
the second half of the steps: the first steps compile and warm up). Each figure is put against its upper
bound: CPUs available to the command, host memory, 100% GPU busy, the device's peak FLOP/s.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    # fields[0] is the state (field 3); ppid is field 4, utime 14, stime 15, rss 24
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE


def tree_usage(root: int) -> tuple[float, int]:
    """CPU seconds and RSS of `root` and all its descendants now."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))):
            stats[int(d)] = s
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    cpu, rss, todo = 0.0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            cpu += stats[pid][1]
            rss += stats[pid][2]
        todo += kids.get(pid, [])
    return cpu, rss


def host_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def _gpus():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no nvidia-ml-py, no driver: a CPU node
        return None, []


@dataclass
class Score:
    command: list[str]
    exit_code: int
    wall_s: float
    cpus: int
    cpu_share: float  # of the CPUs available to the command
    host_busy_share: float
    peak_rss_gib: float
    mem_total_gib: float
    gpus: int = 0
    gpu_util: float | None = None  # mean share of time the GPUs were busy
    gpu_mem_share: float | None = None  # peak share of GPU memory used
    tokens_per_s: float | None = None
    mfu: float | None = None
    samples: int = 0
    bound: str = field(default="")


def metrics_medians(path: Path | None) -> tuple[float | None, float | None]:
    """Median tokens/s and MFU over the second half of the steps in a trainer metrics JSONL."""
    if not path or not path.exists():
        return None, None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = rows[len(rows) // 2:]
    tps = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") is not None]
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return (statistics.median(tps) if tps else None), (statistics.median(mfu) if mfu else None)


def bound_of(s: Score) -> str:
    """What limits the run, from the sampled shares: the resource closest to its upper bound."""
    shares = {"cpu": s.cpu_share, "memory": s.peak_rss_gib / s.mem_total_gib if s.mem_total_gib else 0.0}
    if s.gpu_util is not None:
        shares["gpu"] = s.gpu_util
    name, share = max(shares.items(), key=lambda kv: kv[1])
    return f"{name}-bound ({share:.0%})" if share >= 0.7 else f"not saturated (highest: {name} {share:.0%})"


def run_scored(command: list[str], metrics: Path | None = None, interval: float = 0.5) -> Score:
    """Run `command` to its end, sampling it; the score of that run."""
    nvml, handles = _gpus()
    cpus = len(os.sched_getaffinity(0))
    mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    b0, t0h = host_busy()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_before = before.ru_utime + before.ru_stime
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_rss, cpu_s, n, utils, gmem = 0, 0.0, 0, [], []
    while proc.poll() is None:
        cpu, rss = tree_usage(proc.pid)
        cpu_s, peak_rss, n = max(cpu_s, cpu), max(peak_rss, rss), n + 1
        for h in handles:
            utils.append(nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100)
            m = nvml.nvmlDeviceGetMemoryInfo(h)
            gmem.append(m.used / m.total)
        time.sleep(interval)
    wall = time.perf_counter() - start
    # reaped children's CPU time catches what the last sample missed (a short run may have no sample)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = max(cpu_s, ru.ru_utime + ru.ru_stime - children_before)
    b1, t1h = host_busy()
    tps, mfu = metrics_medians(metrics)
    s = Score(
        command=command, exit_code=proc.returncode, wall_s=round(wall, 2), cpus=cpus,
        cpu_share=min(1.0, cpu_s / (wall * cpus)) if wall else 0.0,
        host_busy_share=(b1 - b0) / (t1h - t0h) if t1h > t0h else 0.0,
        peak_rss_gib=peak_rss / 2**30, mem_total_gib=mem_total / 2**30,
        gpus=len(handles), gpu_util=statistics.mean(utils) if utils else None,
        gpu_mem_share=max(gmem) if gmem else None, tokens_per_s=tps, mfu=mfu, samples=n,
    )
    s.bound = bound_of(s)
    return s


def render(s: Score) -> str:
    """The compact score printed after the run."""
    gpu = (f"{s.gpu_util:.0%} busy, {s.gpu_mem_share:.0%} memory peak, {s.gpus} GPUs" if s.gpu_util is not None
           else "none")
    lines = [
        f"score of `{' '.join(s.command)}`: exit {s.exit_code}, {s.wall_s:.1f} s, {s.samples} samples",
        f"  cpu      {s.cpu_share:5.0%} of {s.cpus} CPUs (host busy {s.host_busy_share:.0%})",
        f"  memory   {s.peak_rss_gib:.2f} GiB peak RSS of {s.mem_total_gib:.0f} GiB",
        f"  gpu      {gpu}",
    ]
    if s.tokens_per_s is not None:
        lines.append(f"  train    {s.tokens_per_s:,.0f} tokens/s" + (f", MFU {s.mfu:.1%} of peak" if s.mfu is not None
                                                                     else ", MFU n/a (no device peak)"))
    lines.append(f"  verdict  {s.bound}")
    return "\n".join(lines)


def to_json(s: Score) -> str:
    return json.dumps(asdict(s), indent=1)
