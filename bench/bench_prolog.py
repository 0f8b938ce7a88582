"""Benchmark the prolog and epilog per job: the wrapper Slurm runs, as Slurm runs it (a new process per job).

    .venv/bin/python bench/bench_prolog.py [--reps N] [--constraints 'thp_never&nvidia_vboost_enabled']

A node root is booted by the local driver in a temp dir, the per-vCluster wrappers are rendered exactly as
`strata up` writes them, then for each repetition the prolog wrapper and the epilog wrapper are executed with
the environment slurmd gives them (SLURMD_NODENAME, SLURM_JOB_ID, SLURM_JOB_CONSTRAINTS). Wall time includes
the shell, the interpreter start and the imports; "in runner" is the runner's own figure from checks.json
(all parts, log and results written). Reported: median, p90 and max in milliseconds. Aim: prolog < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iac.drivers.local import reboot  # noqa: E402
from vocab.layout import Layout  # noqa: E402
from vocab.site import load_site  # noqa: E402
from iac.slurm_inputs import prolog_wrappers  # noqa: E402


def row(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"{name:<34} {statistics.median(ms):8.1f} {p90:8.1f} {ms[-1]:8.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--constraints", default="thp_never&nvidia_vboost_enabled")
    a = ap.parse_args()
    site = load_site(REPO / "sites/local.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout.of(site, Path(tmp))
        node = "nid001"
        reboot(site.nodes[node], layout.node_root(node), "clariden", "bench")
        wrappers = {}
        for path, text in prolog_wrappers(site, layout, "clariden").items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
            wrappers[path.name.removesuffix(".sh")] = path
        times: dict[str, list[float]] = {"prolog": [], "epilog": [], "taskprolog": [], "prolog in runner": [],
                                         "epilog in runner": []}
        for job in range(1, a.reps + 1):
            env = {"PATH": "/usr/bin:/bin", "SLURMD_NODENAME": node, "SLURM_JOB_ID": str(job),
                   "SLURM_JOB_CONSTRAINTS": a.constraints, "SLURM_JOB_UID": str(os.getuid()),
                   "SLURM_JOB_GID": str(os.getgid())}
            for kind in ("prolog", "taskprolog", "epilog"):
                t0 = time.perf_counter()
                r = subprocess.run([str(wrappers[kind])], env=env, capture_output=True, text=True)
                times[kind].append((time.perf_counter() - t0) * 1000)
                if r.returncode != 0:
                    raise SystemExit(f"{kind} failed: {r.stderr}")
                if kind != "taskprolog":
                    checks = json.loads((layout.node_dir(node) / "checks.json").read_text())
                    times[f"{kind} in runner"].append(checks[kind]["ms"])
        print(f"prolog/epilog per job, {a.reps} jobs, constraints {a.constraints!r} (ms)")
        print(f"{'':<34} {'median':>8} {'p90':>8} {'max':>8}")
        for name in ("prolog", "prolog in runner", "taskprolog", "epilog", "epilog in runner"):
            print(row(name, times[name]))
        total = [p + t + e for p, t, e in zip(times["prolog"], times["taskprolog"], times["epilog"])]
        print(row("prolog + taskprolog + epilog", total))


if __name__ == "__main__":
    main()
