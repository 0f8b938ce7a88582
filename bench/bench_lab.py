"""How long `strata lab up` takes for a lab of the shape of sites/lab.yaml: 8 nodes + 3 controller hosts.

    .venv/bin/python bench/bench_lab.py [--reps N]      # as root; default 5 rounds

Each round, in a fresh state dir, times the commands as a user runs them (new processes, imports included):
`lab up` on a fresh state dir (the site's key pair and 11 host keys made), `lab up` again while the lab runs
(nothing to do: what starting Python and strata's imports cost), `lab down`, and `lab up` once more with the
keys kept (what a re-up costs); then `down` and `up` again in this process, without that start-up cost. Every `up`
returns only once all 11 sshds answer. The lab gets its own subnet of 198.19.0.0/16 and bridge, so it never
meets a running sites/lab.yaml. Reported in seconds: median and min-max over the rounds, with the load average.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iac.drivers import lab  # noqa: E402
from iac.drivers.lab_spec import free_subnet, spec_from_site  # noqa: E402
from vocab.site import load_site  # noqa: E402

ROWS = ("up, fresh state (keys made)", "up, already running", "down", "up again, keys kept",
        "in process: down", "in process: up, keys kept")


def site_file(path: Path) -> None:
    """sites/lab.yaml with addresses moved into a free test subnet."""
    site = yaml.safe_load((REPO / "sites" / "lab.yaml").read_text())
    net = ipaddress.ip_network(free_subnet(prefix=24))
    site["nodes"][0]["addresses"] = f"{'.'.join(str(net[1]).split('.')[:3])}.[1-8]"
    i = 11
    for plat in site["platforms"].values():
        for vc in plat["vclusters"].values():
            vc["controller"]["address"] = str(net[i])
            i += 1
    path.write_text(yaml.safe_dump(site))


def strata(env: dict, *args: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "strata.cli", "lab", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"strata lab {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if why := lab.namespaces_unavailable():
        raise SystemExit(f"cannot bench the lab here: {why}")
    times: dict[str, list[float]] = {r: [] for r in ROWS}
    loads = []
    for _ in range(args.reps):
        tmp = Path(tempfile.mkdtemp(prefix="strata-bench-lab-"))
        env = {**os.environ, "STRATA_SITE": str(tmp / "lab.yaml"), "STRATA_STATE": str(tmp / "state")}
        try:
            site_file(tmp / "lab.yaml")
            loads.append(os.getloadavg()[0])
            times[ROWS[0]].append(strata(env, "up"))
            times[ROWS[1]].append(strata(env, "up"))
            times[ROWS[2]].append(strata(env, "down"))
            times[ROWS[3]].append(strata(env, "up"))
            # the same work without a new Python and strata's imports (what the CLI adds is the difference)
            spec = spec_from_site(load_site(tmp / "lab.yaml"), tmp / "state")
            t = time.perf_counter()
            lab.down(spec.root)
            times[ROWS[4]].append(time.perf_counter() - t)
            t = time.perf_counter()
            lab.up(spec)
            times[ROWS[5]].append(time.perf_counter() - t)
        finally:
            subprocess.run([sys.executable, "-m", "strata.cli", "lab", "down"], env=env, capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"strata lab, 8 nodes + 3 controllers, {args.reps} rounds (load average {min(loads):.1f}-{max(loads):.1f}, "
          f"{os.cpu_count()} CPUs)")
    for row, ts in times.items():
        print(f"  {row:30} median {statistics.median(ts):5.2f} s   (min-max {min(ts):.2f}-{max(ts):.2f})")


if __name__ == "__main__":
    main()
