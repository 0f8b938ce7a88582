"""Benchmark the pure IaC path at Alps scale: load + validate `sites/alps.yaml`, plan a 256-node move,
render the biggest vCluster's slurm.conf.

    .venv/bin/python bench/bench_plan.py [--reps N] [--site PATH]

Each row is timed `--reps` times (a fresh `Site` per repetition, so no cached property carries over) and
reported as median and min in milliseconds. The last row runs a new Python process per repetition
(imports included): what `strata plan` costs a user before it talks to any daemon.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from services.layout import Layout  # noqa: E402
from iac.plan import make_plan  # noqa: E402
from iac.site import Site, load_site, parse_site  # noqa: E402
from iac.slurm_inputs import slurm_cluster  # noqa: E402
from services.slurm.render import render_gres_conf, render_slurm_conf  # noqa: E402

MOVED = 256
SOURCE, TARGET = "clariden", "daint"


def moved_desired(site: Site, n: int = MOVED) -> dict[str, str | None]:
    """The site's owners with the last `n` nodes of SOURCE given to TARGET."""
    desired = dict(site.desired)
    members = site.members(SOURCE)
    assert len(members) >= n, f"{SOURCE} has {len(members)} nodes, fewer than {n}"
    for node in members[-n:]:
        desired[node] = TARGET
    return desired


def timed(fn: Callable[[], object], reps: int, setup: Callable[[], object] | None = None) -> list[float]:
    """Seconds per call of fn(arg) where arg = setup() is prepared outside the timing."""
    out = []
    for _ in range(reps):
        arg = setup() if setup else None
        t = time.perf_counter()
        fn(arg) if setup else fn()
        out.append(time.perf_counter() - t)
    return out


COLD = """
import sys, time
t = time.perf_counter()
from iac.plan import make_plan
from iac.site import load_site
imported = time.perf_counter() - t
site = load_site(sys.argv[1])
desired = dict(site.desired)
for node in site.members("{source}")[-{n}:]:
    desired[node] = "{target}"
assert len(make_plan(site, site.desired, set(), desired).moves) == {n}
print(imported, time.perf_counter() - t)
""".format(source=SOURCE, target=TARGET, n=MOVED)


def cold_process(site_path: Path) -> tuple[float, float]:
    """A new interpreter: import, load, validate, plan (as `strata plan` does before any daemon).

    Returns (seconds spent importing, seconds in all), both measured inside the child.
    """
    r = subprocess.run([sys.executable, "-c", COLD, str(site_path)], capture_output=True, text=True, check=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    imported, total = r.stdout.split()[-2:]
    return float(imported), float(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--site", type=Path, default=REPO / "sites/alps.yaml")
    a = ap.parse_args()

    site = load_site(a.site)
    desired = moved_desired(site)
    plan = make_plan(site, site.desired, set(), desired)
    assert len(plan.moves) == MOVED, len(plan.moves)
    text = a.site.read_text()
    data = yaml.safe_load(text)
    tmp = tempfile.TemporaryDirectory(prefix="strata-bench-plan-")  # the layout's state dir; stays empty
    layout = Layout.of(site, Path(tmp.name))
    members = site.members(SOURCE)

    def fresh() -> Site:
        return load_site(a.site)

    def warm() -> Site:
        s = load_site(a.site)
        s.nodes, s.desired  # noqa: B018 (fill the cached properties outside the timing)
        return s

    def end_to_end() -> None:
        s = load_site(a.site)
        make_plan(s, s.desired, set(), moved_desired(s))

    rows = [
        ("read + parse YAML", timed(lambda: yaml.safe_load(a.site.read_text()), a.reps)),
        ("validate (pydantic + cross-checks)", timed(lambda: parse_site(data, a.site), a.reps)),
        ("load_site (read + parse + validate)", timed(fresh, a.reps)),
        ("expand nodes + owners (site.nodes, .desired)",
         timed(lambda s: (s.nodes, s.desired), a.reps, setup=fresh)),
        (f"make_plan: {MOVED} nodes {SOURCE} -> {TARGET}",
         timed(lambda s: make_plan(s, s.desired, set(), moved_desired(s)), a.reps, setup=warm)),
        ("load + validate + plan (end to end)", timed(end_to_end, a.reps)),
        (f"render {SOURCE} slurm.conf ({len(members)} nodes)",
         timed(lambda: render_slurm_conf(slurm_cluster(site, layout, SOURCE, members)), a.reps)),
        (f"render {SOURCE} gres.conf",
         timed(lambda: render_gres_conf(slurm_cluster(site, layout, SOURCE, members)), a.reps)),
    ]
    cold = [cold_process(a.site) for _ in range(max(5, a.reps // 5))]
    rows += [
        ("new process: imports (iac.site, iac.plan)", [c[0] for c in cold]),
        ("new process: imports + load + plan", [c[1] for c in cold]),
    ]
    conf = render_slurm_conf(slurm_cluster(site, layout, SOURCE, members))

    print(f"site {a.site.name}: {len(site.nodes)} nodes, {len(site.vclusters)} vClusters; "
          f"plan: {len(plan.moves)} moves ({'; '.join(plan.summary())}); "
          f"{SOURCE} slurm.conf: {len(conf.splitlines())} lines, {len(conf) // 1024} KiB")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'reps':>4}  {'median ms':>9}  {'min ms':>8}")
    for what, secs in rows:
        print(f"{what:<{width}}  {len(secs):>4}  {statistics.median(secs) * 1e3:>9.1f}  {min(secs) * 1e3:>8.1f}")
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    tmp.cleanup()


if __name__ == "__main__":
    main()
