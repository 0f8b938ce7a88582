"""Run the numbered parts of a prolog or epilog: all of them, each logged, the whole failing if one failed.

A part is a file `NN-name` in `<kind>.d/`: a `.py` part is loaded in this process and its `run(ctx)` called
(no interpreter start per part: the prolog stays well under a second), any other executable runs as a
subprocess with the same environment. The parts come from the node's installed copy
(`<root>/etc/strata/<kind>.d`, put there by the `prolog` role) or, when none is installed, from this package.

When a prolog part fails, the epilog's parts run at once to undo what the earlier parts applied, the node is
drained with our reason (`strata: prolog gpu-memory: GPU2 71% free`) and the runner exits 1, so Slurm
requeues the batch job onto another node. The last results go to `<node dir>/checks.json` for `strata nodes`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.slurm.control import OUR_PREFIX, SlurmClient, SlurmError
from vocab.files import write_atomic

PARTS = Path(__file__).resolve().parent / "parts"
KINDS = ("prolog", "epilog")
PART_TIMEOUT = 60  # seconds one subprocess part may take
_PART_FILE = re.compile(r"^\d\d-[A-Za-z0-9_.-]+$")


class PartFailed(Exception):
    """A part found the node unfit or could not apply a setting; the message goes into the drain reason."""


@dataclass(frozen=True)
class Context:
    """What a part knows about the node and the job."""

    kind: str
    root: Path  # the node's "/"
    node: str
    job_id: str
    constraints: str = ""  # SLURM_JOB_CONSTRAINTS, e.g. "thp_never&nvidia_vboost_enabled"
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        """The node root is an emulated one (local site), not the real `/`."""
        return self.root != Path("/")

    def path(self, rel: str) -> Path:
        """A path on the node, e.g. ctx.path("proc/sys/vm/drop_caches")."""
        return self.root / rel


@dataclass
class PartResult:
    name: str
    ok: bool
    detail: str = ""
    ms: float = 0.0


def parts_dir(kind: str, root: Path, packaged: Path = PARTS) -> Path:
    """The node's installed parts if the prolog role put them there, else this package's."""
    installed = root / "etc/strata" / f"{kind}.d"
    return installed if installed.is_dir() else packaged / f"{kind}.d"


def discover(directory: Path) -> list[Path]:
    """Part files in run order (NN-name; editor backups, hidden files and caches are not parts)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and _PART_FILE.match(p.name) and not p.name.endswith("~"))


def part_name(path: Path) -> str:
    """`20-gpu-memory.py` -> `gpu-memory` (the name used in logs and drain reasons)."""
    return re.sub(r"\.(py|sh)$", "", path.name.split("-", 1)[1])


def _run_py(path: Path, ctx: Context) -> str | None:
    spec = importlib.util.spec_from_file_location(f"strata_part_{path.stem.replace('-', '_')}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(ctx)


def _run_exe(path: Path, ctx: Context) -> str | None:
    env = {**ctx.env, "STRATA_NODE_ROOT": str(ctx.root), "STRATA_PART_KIND": ctx.kind}
    r = subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=PART_TIMEOUT)
    if r.returncode != 0:
        last = (r.stderr or r.stdout).strip().splitlines()
        raise PartFailed(f"exit {r.returncode}" + (f": {last[-1][:120]}" if last else ""))
    return (r.stdout.strip().splitlines() or [None])[-1]


def run_part(path: Path, ctx: Context) -> PartResult:
    """Run one part; never raises: a broken part is a failed result naming what went wrong."""
    t0 = time.perf_counter()
    try:
        detail = (_run_py if path.suffix == ".py" else _run_exe)(path, ctx)
        ok = True
    except PartFailed as e:
        ok, detail = False, str(e)
    except subprocess.TimeoutExpired:
        ok, detail = False, f"timed out after {PART_TIMEOUT}s"
    except Exception as e:  # a part's bug must fail the part, not crash the runner and skip the rest
        ok, detail = False, f"{type(e).__name__}: {e}"
    return PartResult(part_name(path), ok, detail or "", round((time.perf_counter() - t0) * 1000, 1))


def run_parts(kind: str, ctx: Context, packaged: Path = PARTS) -> list[PartResult]:
    """Every part of `kind`, in order, whatever the earlier ones returned."""
    return [run_part(p, ctx) for p in discover(parts_dir(kind, ctx.root, packaged))]


def drain_reason(kind: str, results: list[PartResult]) -> str | None:
    """Our drain reason naming the first failed part and its figure; None if all passed."""
    bad = next((r for r in results if not r.ok), None)
    if bad is None:
        return None
    return f"{OUR_PREFIX} {kind} {bad.name}: {bad.detail}"[:240]


class NodeRecord:
    """The node's log and last check results, under its node dir (`<state>/nodes/<nid>` on the local site)."""

    def __init__(self, node_dir: Path):
        self.dir = node_dir

    def log(self, kind: str, job: str, results: list[PartResult], extra: str = "") -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        lines = [f"{stamp} job={job} {kind} {r.name} {'ok' if r.ok else 'FAILED'} {r.ms}ms {r.detail}".rstrip()
                 for r in results]
        if extra:
            lines.append(f"{stamp} job={job} {kind} {extra}")
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log" / f"{kind}.log", "a") as f:
            f.write("\n".join(lines) + "\n")

    def save(self, kind: str, job: str, results: list[PartResult], total_ms: float) -> None:
        path = self.dir / "checks.json"
        try:
            checks = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            checks = {}
        checks[kind] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "job": job,
            "ok": all(r.ok for r in results), "ms": round(total_ms, 1), "parts": [asdict(r) for r in results],
        }
        write_atomic(path, json.dumps(checks, indent=1, sort_keys=True) + "\n")


def load_checks(node_dir: Path) -> dict:
    """The node's last prolog/epilog results as `save` wrote them ({} when none yet)."""
    try:
        return json.loads((Path(node_dir) / "checks.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def summarize(checks: dict) -> str:
    """One line of the node's last results: `prolog ok (job 12, 85 ms)` or the failed parts with details."""
    out = []
    for kind in ("prolog", "epilog"):
        c = checks.get(kind)
        if not c:
            continue
        bad = [f"{p['name']}: {p['detail']}" for p in c["parts"] if not p["ok"]]
        out.append(f"{kind} " + ("; ".join(bad) if bad else f"ok (job {c['job']}, {c['ms']:.0f} ms)"))
    return " | ".join(out)


def drain(node: str, reason: str, env: Mapping[str, str]) -> str:
    """Drain the node with our reason before failing, so it replaces Slurm's generic "Prolog error"."""
    try:
        SlurmClient.from_env(dict(env)).drain([node], reason)
    except (SlurmError, subprocess.TimeoutExpired) as e:
        return f"drain failed: {e}"
    return "drained"


def context_from_env(kind: str, env: Mapping[str, str]) -> Context:
    return Context(
        kind=kind,
        root=Path(env.get("STRATA_NODE_ROOT") or "/"),
        node=env.get("SLURMD_NODENAME", ""),
        job_id=env.get("SLURM_JOB_ID", ""),
        constraints=env.get("SLURM_JOB_CONSTRAINTS", ""),
        env=env,
    )


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """`python -m services.prolog run prolog|epilog` (env from Slurm and our wrapper); exit 1 if a part failed."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run" or argv[1] not in KINDS:
        print("usage: python -m services.prolog run prolog|epilog", file=sys.stderr)
        return 2
    kind, env = argv[1], dict(os.environ if environ is None else environ)
    t0 = time.perf_counter()
    ctx = context_from_env(kind, env)
    record = NodeRecord(Path(env.get("STRATA_NODE_DIR") or "/var/lib/strata/node"))
    results = run_parts(kind, ctx)
    reason = drain_reason(kind, results)
    extra = ""
    if reason and kind == "prolog":
        # undo what the parts before the failure applied: nothing stays half-applied on the node
        undo = run_parts("epilog", context_from_env("epilog", env))
        extra = "undone by epilog parts: " + ", ".join(f"{r.name} {'ok' if r.ok else 'FAILED'}" for r in undo)
    if reason and ctx.node:
        extra = f"{extra}; {drain(ctx.node, reason, env)}: {reason}".lstrip("; ")
    record.log(kind, ctx.job_id, results, extra)
    record.save(kind, ctx.job_id, results, (time.perf_counter() - t0) * 1000)
    if reason:
        print(reason, file=sys.stderr)
    return 1 if reason else 0
