"""With -C vetnode: the `llm` vetting profile's node-local checks (not the all-reduce) in 10 s, else fail naming one."""

import subprocess
import sys
from pathlib import Path

import services
from services.prolog.runner import PartFailed
from services.prolog.tuning import VETNODE_FEATURE, features

PROFILE = "llm"
TIMEOUT = 10  # seconds, the interpreter start and torch's import included


def run(ctx):
    if VETNODE_FEATURE not in features(ctx.constraints):
        return "skipped: not asked"
    src = str(Path(services.__file__).resolve().parents[1])  # the child imports the same strata as the runner
    path = ctx.env.get("PYTHONPATH")
    env = {**ctx.env, "STRATA_NODE_ROOT": str(ctx.root), "SLURMD_NODENAME": ctx.node,
           "PYTHONPATH": f"{src}:{path}" if path else src}
    cmd = [sys.executable, "-m", "services.vetting", "--node-local", "--profile", PROFILE]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PartFailed(f"timed out after {TIMEOUT:g} s") from None
    if r.returncode != 0:  # the last stderr line names the failed checks and figures
        last = r.stderr.strip().splitlines()
        raise PartFailed(last[-1][:200] if last else f"exit {r.returncode}")
    return f"{PROFILE} profile, node-local checks passed"
