"""Benchmark the pure IaC path at Alps scale: load + validate `sites/alps.yaml`, plan a 256-node move,
render the biggest vCluster's slurm.conf.

    .venv/bin/python bench/bench_plan.py [--reps N] [--site PATH]

Every row is timed once per round, `--reps` rounds, the rows in a new random order each round (so that
other load on a shared machine falls on all rows alike); a fresh `Site` per repetition, so no cached
property carries over. The YAML row times load_site's own read + parse (its loader, not another one);
a row beside it parses with the pure-Python SafeLoader, which load_site uses only to word an error.
Reported in milliseconds: median, interquartile range and min-max. The new-process rows start a Python
every few rounds (imports included): what `strata plan` costs a user before it talks to any daemon.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vocab.layout import Layout  # noqa: E402
import vocab.site  # noqa: E402
from iac.plan import make_plan  # noqa: E402
from vocab.site import Site, load_site, parse_site  # noqa: E402
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


def timer(fn: Callable[[Any], object], setup: Callable[[], Any] = lambda: None) -> Callable[[], float]:
    """A row: seconds of one fn(setup()) call, the setup prepared outside the timing."""
    def run() -> float:
        arg = setup()
        t = time.perf_counter()
        fn(arg)
        return time.perf_counter() - t
    return run


# load_site's own code, with parse_site (the validation) swapped for the identity: times exactly the read
# and the YAML parse that load_site does, whichever loader it picks.
read_and_parse = types.FunctionType(load_site.__code__, {**vars(vocab.site), "parse_site": lambda data, path: data})


COLD = """
import sys, time
t = time.perf_counter()
from iac.plan import make_plan
from vocab.site import load_site
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


def spread(secs: list[float]) -> str:
    """median, interquartile range and min-max, in ms."""
    q1, _, q3 = statistics.quantiles(secs, n=4, method="inclusive")
    ms = lambda x: f"{x * 1e3:.1f}"  # noqa: E731
    return (f"{ms(statistics.median(secs)):>9}  {ms(q1) + '-' + ms(q3):>13}  "
            f"{ms(min(secs)) + '-' + ms(max(secs)):>13}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--site", type=Path, default=REPO / "sites/alps.yaml")
    a = ap.parse_args()

    site = load_site(a.site)
    desired = moved_desired(site)
    plan = make_plan(site, site.desired, set(), desired)
    assert len(plan.moves) == MOVED, len(plan.moves)
    data = read_and_parse(a.site)
    assert parse_site(data, a.site) == site, "read_and_parse must give load_site's data"
    text = a.site.read_text()
    members = site.members(SOURCE)
    load = [os.getloadavg()[0]]

    def fresh() -> Site:
        return load_site(a.site)

    def warm() -> Site:
        s = load_site(a.site)
        s.nodes, s.desired  # noqa: B018 (fill the cached properties outside the timing)
        return s

    def end_to_end(_: None) -> None:
        s = load_site(a.site)
        make_plan(s, s.desired, set(), moved_desired(s))

    with tempfile.TemporaryDirectory(prefix="strata-bench-plan-") as tmp:  # the layout's state dir; stays empty
        layout = Layout.of(site, Path(tmp))
        rows = [
            ("read + parse YAML (as load_site does)", timer(lambda _: read_and_parse(a.site))),
            ("  for comparison: parse with pure-Python SafeLoader", timer(lambda _: yaml.safe_load(text))),
            ("validate (pydantic + cross-checks)", timer(lambda _: parse_site(data, a.site))),
            ("load_site (read + parse + validate)", timer(lambda _: load_site(a.site))),
            ("expand nodes + owners (site.nodes, .desired)", timer(lambda s: (s.nodes, s.desired), fresh)),
            (f"make_plan: {MOVED} nodes {SOURCE} -> {TARGET}",
             timer(lambda s: make_plan(s, s.desired, set(), moved_desired(s)), warm)),
            ("load + validate + plan (end to end)", timer(end_to_end)),
            (f"render {SOURCE} slurm.conf ({len(members)} nodes)",
             timer(lambda _: render_slurm_conf(slurm_cluster(site, layout, SOURCE, members)))),
            (f"render {SOURCE} gres.conf", timer(lambda _: render_gres_conf(slurm_cluster(site, layout, SOURCE, members)))),
        ]
        # Interleaved: every round runs each row once, in a new random order, so that a burst of other
        # load on the machine does not land on one row's repetitions only. A new process costs ~0.5 s:
        # one every few rounds, between them.
        rng = random.Random(0)
        times: dict[str, list[float]] = {name: [] for name, _ in rows}
        cold_imports, cold_total, cold_every = [], [], max(1, a.reps // 5)
        for rnd in range(a.reps):
            for name, run in rng.sample(rows, len(rows)):
                times[name].append(run())
            if rnd % cold_every == 0:
                imported, total = cold_process(a.site)
                cold_imports.append(imported)
                cold_total.append(total)
        times["new process: imports (vocab.site, iac.plan)"] = cold_imports
        times["new process: imports + load + plan"] = cold_total
        conf = render_slurm_conf(slurm_cluster(site, layout, SOURCE, members))
    load.append(os.getloadavg()[0])

    print(f"site {a.site.name}: {len(site.nodes)} nodes, {len(site.vclusters)} vClusters; "
          f"plan: {len(plan.moves)} moves ({'; '.join(plan.summary())}); "
          f"{SOURCE} slurm.conf: {len(conf.splitlines())} lines, {len(conf) // 1024} KiB")
    print(f"{a.reps} rounds, each row once per round in a new random order; a new process "
          + ("every round" if cold_every == 1 else f"every {cold_every} rounds"))
    width = max(len(k) for k in times)
    print(f"{'what':<{width}}  {'reps':>4}  {'median ms':>9}  {'IQR ms':>13}  {'min-max ms':>13}")
    for what, secs in times.items():
        print(f"{what:<{width}}  {len(secs):>4}  {spread(secs)}")
    print(f"load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
