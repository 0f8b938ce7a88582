"""Benchmark node moves on real Slurm daemons: `SiteOps.apply` against a hand-written shell baseline.

    .venv/bin/python bench/bench_move.py [--reps N] [--no-ansible-floor]

Two copies of a small local site (6 nodes: vCluster alpha nid[001-005], beta nid006) run side by side in a
temporary state dir, each with its own free port range. On one, strata moves nodes with `SiteOps.apply`;
on the other, `bench/baseline_move.sh` does the same raw steps by hand (scontrol; slurmctld and slurmd
started, stopped and reloaded by pid). For 1 and 4 nodes, each repetition moves the nodes alpha -> beta
and back, interleaving strata and the baseline (ABBA order) so that other load falls on both alike.

Printed: the wall time of a move (median, min-max) and the ratio strata/baseline (median, min-max over
the back-to-back pairs); where strata's time goes, per step (from the site's `journal.jsonl`) and inside
the steps (controller restarts, the Ansible playbook, its start-up and tasks from ansible-runner's job
events); the baseline's own steps; and the floor of one ansible-runner run (an empty playbook, one command
task, one raw task) on this machine.
Everything is torn down at the end, also on failure or Ctrl-C: `SiteOps.down(purge=True)` on both sites,
after the baseline's daemons are stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import iac.moves  # noqa: E402
from vocab.layout import NODE_PORT_OFFSET, Layout  # noqa: E402
from iac.ops import SiteOps  # noqa: E402
from iac.plane import Plane  # noqa: E402
from vocab.site import Site, load_site  # noqa: E402
from services.slurm.control import SlurmClient  # noqa: E402
from services.slurm.daemons import Slurmctld, owned_pid, stop_pid  # noqa: E402

BASELINE = REPO / "bench" / "baseline_move.sh"
STEPS = ("drain", "wait", "detach", "reboot", "admit", "resume")
NODES = [f"nid{i:03d}" for i in range(1, 7)]
SITE = """\
# bench/bench_move.py: a small local site, moved back and forth
site: {name}
driver: local
ports: {{base: {base}}}
nodes:
  - names: nid[001-006]
    hardware:
      cpus: 8
      memory_gib: 16
      gpus: {{model: gh200, count: 4, memory_gib: 96, vboost: true}}
platforms:
  ml:
    vclusters:
      alpha: {{nodes: "nid[001-005]", image: alpha-img}}
      beta: {{nodes: nid006, image: beta-img}}
"""


# ---- setup and teardown ---------------------------------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_base(avoid: set[int]) -> int:
    """A port base whose controller and node ports are all free and clear of `avoid`."""
    for _ in range(200):
        base = random.randrange(30000, 60000, 10)
        ports = [*range(base, base + 2), *range(base + NODE_PORT_OFFSET, base + NODE_PORT_OFFSET + len(NODES))]
        if not avoid & set(range(base - 100, base + 100)) and all(port_free(p) for p in ports):
            return base
    raise SystemExit("no free port range found for the bench sites")


def make_site(tmp: Path, name: str, base: int) -> Site:
    path = tmp / f"{name}.yaml"
    path.write_text(SITE.format(name=name, base=base))
    return load_site(path)


def stop_daemons(layout: Layout) -> None:
    """Stop every daemon of a bench site by the pid in its pidfile (baseline-started ones included)."""
    for node in NODES:
        pid = owned_pid(layout.slurmd_pidfile(node), "slurmd", node)
        if pid:
            stop_pid(pid, f"slurmd of {node}")
    for v in ("alpha", "beta"):
        pid = owned_pid(layout.ctld_pidfile(v), "slurmctld", str(layout.slurm_conf(v)))
        if pid:
            stop_pid(pid, f"slurmctld of {v}")
        munge = layout.munge_dir(v)
        pid = owned_pid(munge / "munged.pid", "munged", str(munge / "munge.sock"))
        if pid:
            stop_pid(pid, f"munged of {v}")


# ---- measuring strata ----------------------------------------------------------------------------

class Probe:
    """Wraps functions to record when each call ran (wall clock, to line up with the journal)."""

    def __init__(self):
        self.calls: list[tuple[str, float, float]] = []
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: object, attr: str, label: str) -> None:
        orig = getattr(owner, attr)

        def timed(*a, **kw):
            t = time.time()
            try:
                return orig(*a, **kw)
            finally:
                self.calls.append((label, t, time.time()))

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, orig))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


def journal_breakdown(records: list[dict], t_start: float, t_end: float, probe_calls) -> dict[str, float]:
    """Seconds per step of one apply (first start to last done over its nodes), plus what lies around them."""
    spans: dict[str, list[float]] = {}
    for r in records:
        if r["step"] in STEPS:
            s = spans.setdefault(r["step"], [r["ts"], r["ts"]])
            s[0], s[1] = min(s[0], r["ts"]), max(s[1], r["ts"])
    out = {step: hi - lo for step, (lo, hi) in spans.items()}
    stamps = [r["ts"] for r in records]
    out["before steps (start daemons, observe, plan)"] = min(stamps) - t_start
    out["after steps (journal, outcomes)"] = t_end - max(stamps)
    for label, t0, t1 in probe_calls:
        step = next((s for s, (lo, hi) in spans.items() if lo - 0.002 <= (t0 + t1) / 2 <= hi + 0.002), "outside")
        key = f"{step}: {label}"
        out[key] = out.get(key, 0.0) + (t1 - t0)
    return out


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def ansible_breakdown(run_dir: Path, t0: float, t1: float) -> dict[str, float]:
    """From ansible-runner's job events: start-up, each task (slowest host), the rest."""
    events = []
    for f in (run_dir / "artifacts").glob("*/job_events/*.json"):
        events.append(json.loads(f.read_text()))
    events.sort(key=lambda e: e["counter"])
    first = next(_ts(e["created"]) for e in events if e["event"] == "playbook_on_start")
    last = next(_ts(e["created"]) for e in events if e["event"] == "playbook_on_stats")
    out = {"admit: playbook: start-up (runner, ansible-playbook)": first - t0}
    starts: dict[tuple[str, str], float] = {}
    for e in events:
        d = e.get("event_data", {})
        key = (d.get("task", ""), d.get("host", ""))
        if e["event"] == "runner_on_start":
            starts[key] = _ts(e["created"])
        elif e["event"] in ("runner_on_ok", "runner_on_skipped", "runner_on_failed") and key in starts:
            name = f"admit: playbook: task {key[0]!r}"
            out[name] = max(out.get(name, 0.0), _ts(e["created"]) - starts[key])
    out["admit: playbook: play (all tasks)"] = last - first
    out["admit: playbook: after the play"] = t1 - last
    return out


def ours_move(ops: SiteOps, nodes: list[str], target: str, probe: Probe) -> tuple[float, dict[str, float]]:
    desired = {n: target if n in nodes else ("beta" if n == "nid006" else "alpha") for n in NODES}
    before = len(ops.journal.records())
    probe.calls.clear()
    t0 = time.time()
    outcomes = ops.apply(desired, timeout=60)
    t1 = time.time()
    bad = [o for o in outcomes if not o.ok]
    if bad or len(outcomes) != len(nodes):
        raise SystemExit(f"strata move failed: {bad or outcomes}")
    records = ops.journal.records()[before:]
    steps = journal_breakdown(records, t0, t1, probe.calls)
    playbook = [c for c in probe.calls if c[0] == "playbook"]
    runs = sorted(ops.layout.ansible_dir.glob("*/artifacts")) if playbook else []
    if runs and runs[-1].stat().st_mtime >= playbook[-1][1]:  # the playbook run of this apply
        steps.update(ansible_breakdown(runs[-1].parent, playbook[-1][1], playbook[-1][2]))
    return t1 - t0, steps


# ---- measuring the baseline ----------------------------------------------------------------------

def baseline_move(layout: Layout, nodes: list[str], source: str, target: str) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(BASELINE), str(layout.root), source, target, *nodes],
                       capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"baseline move failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    steps = {}
    for line in r.stdout.splitlines():
        if line.startswith("STEP "):
            _, step, secs = line.split()
            steps[step] = float(secs)
    return wall, steps


def check_owners(layout: Layout, nodes: list[str], target: str) -> None:
    """After a move both controllers agree: the nodes are in target, not drained, and not in the other."""
    for v in ("alpha", "beta"):
        states = SlurmClient(layout.slurm_conf(v)).nodes()
        for n in nodes:
            if (n in states) != (v == target):
                raise SystemExit(f"{n}: expected only in {target}, {v} says {states.get(n)}")
            if v == target and states[n].drain:
                raise SystemExit(f"{n}: still drained in {target} after the move: {states[n].state}")


# ---- the Ansible floor ---------------------------------------------------------------------------

PLAY = "- hosts: all\n  gather_facts: false\n  tasks: {tasks}\n"
FLOOR_PLAYBOOKS = {  # what -> (playbook, hosts)
    "ansible-runner: empty play, 1 node": (PLAY.format(tasks="[]"), 1),
    "ansible-runner: one command task, 1 node": (PLAY.format(tasks="[{command: /bin/true}]"), 1),
    "ansible-runner: one command task, 4 nodes": (PLAY.format(tasks="[{command: /bin/true}]"), 4),
    "ansible-runner: one raw task (our roles), 1 node": (PLAY.format(tasks="[{raw: /bin/true}]"), 1),
    "ansible-runner: one raw task (our roles), 4 nodes": (PLAY.format(tasks="[{raw: /bin/true}]"), 4),
}


def ansible_floor(tmp: Path, reps: int) -> dict[str, list[float]]:
    """What one ansible-runner run costs here before our role does anything (local connection)."""
    import ansible_runner

    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORKS": "16"}
    out: dict[str, list[float]] = defaultdict(list)
    for i in range(reps):
        for j, (what, (text, hosts)) in enumerate(FLOOR_PLAYBOOKS.items()):
            d = tmp / f"ansible-floor-{i}-{j}"
            (d / "inventory").mkdir(parents=True)
            inventory = {n: {"ansible_connection": "local"} for n in NODES[:hosts]}
            (d / "inventory/hosts.json").write_text(json.dumps({"all": {"hosts": inventory}}))
            (d / "play.yml").write_text(text)
            t = time.perf_counter()
            r = ansible_runner.run(private_data_dir=str(d), playbook=str(d / "play.yml"), envvars=env,
                                   quiet=True)
            out[what].append(time.perf_counter() - t)
            assert r.status == "successful", (what, r.status)
    return out


# ---- report ---------------------------------------------------------------------------------------

def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


OUTER = ("before steps (start daemons, observe, plan)", *STEPS, "after steps (journal, outcomes)")
INNER = ("slurmctld restart", "scontrol reconfigure", "reload slurmds", "playbook", "playbook: start-up",
         "playbook: task", "playbook: play", "playbook: after")


def _row_order(key: str) -> tuple[int, int]:
    """Steps in move order; inside a step ('step: what'), the INNER order, tasks as they ran."""
    step, _, inner = key.partition(": ")
    outer = OUTER.index(step) if step in OUTER else len(OUTER)
    if not inner:
        return outer, -1
    return outer, next((i for i, p in enumerate(INNER) if inner.startswith(p)), len(INNER))


def report(walls, ours_steps, base_steps, floor, load) -> None:
    print(f"\nload average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} CPUs")
    print("\nmove wall time, seconds (each sample: one apply / one script run; alpha->beta and back)")
    print("ratio: median [min-max] of strata / baseline over the back-to-back pairs (one move of each)")
    print(f"{'nodes':>5}  {'n':>2}  {'strata med':>10}  {'min-max':>11}  {'baseline med':>12}  {'min-max':>11}"
          f"  {'ratio':>17}")
    for k in sorted({k for _, k in walls}):
        o, b = walls[("strata", k)], walls[("baseline", k)]
        pairs = [x / y for x, y in zip(o, b, strict=True)]  # appended pair by pair, in ABBA order
        print(f"{k:>5}  {len(o):>2}  {med(o):>10.2f}  {f'{min(o):.2f}-{max(o):.2f}':>11}  {med(b):>12.2f}"
              f"  {f'{min(b):.2f}-{max(b):.2f}':>11}  {f'{med(pairs):.1f}x [{min(pairs):.1f}-{max(pairs):.1f}]':>17}")

    ks = sorted({k for _, k in walls})
    print("\nwhere the time goes, seconds (medians; 'step: x' rows are inside that step)")
    keys: list[str] = []
    for k in ks:
        for d in ours_steps[k]:
            keys += [x for x in d if x not in keys]
    keys.sort(key=_row_order)
    width = max(len(x) for x in keys) + 2
    print(f"{'strata':<{width}}" + "".join(f"{f'{k} node(s)':>12}" for k in ks))
    for x in keys:
        label = ("  " + x) if ":" in x else x
        print(f"{label:<{width}}" + "".join(f"{med([d.get(x, 0.0) for d in ours_steps[k]]):>12.3f}" for k in ks))
    print(f"{'baseline_move.sh':<{width}}" + "".join(f"{f'{k} node(s)':>12}" for k in ks))
    for s in STEPS:
        print(f"{s:<{width}}" + "".join(f"{med([d.get(s, 0.0) for d in base_steps[k]]):>12.3f}" for k in ks))
    if floor:
        print("\nAnsible floor on this machine, seconds (ansible_connection=local, 16 forks like our runner)")
        for what, xs in floor.items():
            print(f"{what:<{width}}{med(xs):>12.3f}  (min-max {min(xs):.3f}-{max(xs):.3f}, n={len(xs)})")


# ---- main -----------------------------------------------------------------------------------------

def _interrupt(signum, frame) -> None:
    """SIGTERM ends the bench like Ctrl-C, so that the teardown runs."""
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="back-and-forth pairs per node count (2 samples each)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4], help="node counts to move (at most 4)")
    ap.add_argument("--no-ansible-floor", dest="floor", action="store_false")
    a = ap.parse_args()
    assert all(1 <= k <= 4 for k in a.sizes), "alpha keeps nid005: move at most 4 nodes"

    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="strata-bench-move-"))
    os.environ["STRATA_STATE"] = str(tmp / "state")
    base1 = free_base(set())
    ours_site, base_site = make_site(tmp, "benchours", base1), make_site(tmp, "benchbase", free_base({base1}))
    quiet = lambda m: None  # noqa: E731
    ours = SiteOps(ours_site, tmp / "state", say=quiet)
    base = SiteOps(base_site, tmp / "state", say=quiet)
    probe = Probe()
    probe.wrap(iac.moves, "configure_nodes", "playbook")
    probe.wrap(Slurmctld, "restart", "slurmctld restart")
    probe.wrap(SlurmClient, "reconfigure", "scontrol reconfigure")
    if hasattr(Plane, "reload_slurmds"):
        probe.wrap(Plane, "reload_slurmds", "reload slurmds (SIGHUP, wait)")
    walls: dict[tuple[str, int], list[float]] = defaultdict(list)
    ours_steps: dict[int, list[dict]] = defaultdict(list)
    base_steps: dict[int, list[dict]] = defaultdict(list)
    floor: dict[str, list[float]] = {}
    load = [os.getloadavg()[0], 0.0]
    try:
        t = time.perf_counter()
        ours.up()
        base.up()
        print(f"two sites up in {time.perf_counter() - t:.1f}s (state {tmp / 'state'}, "
              f"ports {ours.layout.port_base} and {base.layout.port_base})", flush=True)
        for rep in range(a.reps):
            for k in a.sizes:
                nodes = NODES[:k]
                order = ["strata", "baseline"] if (rep + k) % 2 == 0 else ["baseline", "strata"]
                for source, target in (("alpha", "beta"), ("beta", "alpha")):
                    for who in order:
                        if who == "strata":
                            wall, steps = ours_move(ours, nodes, target, probe)
                            check_owners(ours.layout, nodes, target)
                            ours_steps[k].append(steps)
                        else:
                            wall, steps = baseline_move(base.layout, nodes, source, target)
                            check_owners(base.layout, nodes, target)
                            base_steps[k].append(steps)
                        walls[(who, k)].append(wall)
                        print(f"rep {rep + 1}/{a.reps}  {k} node(s) {source}->{target}  {who:<8} {wall:6.2f}s",
                              flush=True)
                    order.reverse()  # ABBA
        if a.floor:
            floor = ansible_floor(tmp, 2)
        load[1] = os.getloadavg()[0]
        report(walls, ours_steps, base_steps, floor, load)
    finally:
        probe.restore()
        for ops in (base, ours):
            try:
                stop_daemons(ops.layout)
            finally:
                ops.down(purge=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
