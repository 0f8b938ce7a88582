"""Run a vetting profile on every task of an allocation and abort it early if any node fails.

    srun --ntasks-per-node=1 strata vet --profile llm

Every task runs the profile's checks on its node; torch.distributed (gloo on CPU, NCCL on GPU) joins the tasks
for the all-reduce and to gather every node's results. Task 0 prints one report naming the failing nodes and
their figures; every task exits 1 if any node failed, so `srun` fails and the job script stops there.
Outside Slurm it vets this machine alone.

    python -m services.vetting --node-local --profile llm

only runs the checks that measure the node alone (not the all-reduce, not the tasks' `env`): the prolog part
`vetnode` runs it for jobs that ask `-C vetnode`. It exits 1 with the failed figures on one stderr line
(`matmul: 3.5e-06 TFLOP/s < 0.001 (cpu)`), which becomes the drain reason.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import hostlist

from services.vetting.checks import RUN, Result
from services.vetting.profile import Profile

# Checks that need the job's tasks: the all-reduce joins every task of the allocation, `env` reads a task's
# environment (the prolog runs before there are tasks). The others measure the node alone.
TASK_CHECKS = ("allreduce", "env")


def _master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    first = hostlist.expand_hostlist(nodelist)[:1]  # what `scontrol show hostnames` prints, without a client call
    # the local site's nodes all live on this host (NodeAddr=127.0.0.1): their names do not resolve
    try:
        return socket.gethostbyname(first[0]) if first else "127.0.0.1"
    except OSError:
        return "127.0.0.1"


def init_distributed() -> bool:
    """Join the job's tasks (SLURM_PROCID / SLURM_NTASKS); False when alone."""
    world = int(os.environ.get("SLURM_NTASKS", "1"))
    if world == 1:
        return False
    import torch
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", _master_addr())
    if os.environ["MASTER_ADDR"].startswith("127."):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the local site: every node is this host
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 2000))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=int(os.environ["SLURM_PROCID"]), world_size=world,
                            timeout=timedelta(seconds=60))
    return True


def exit_now(code: int) -> None:
    """Exit once the report is out, without interpreter finalization.

    After a gloo group, torch's C++ teardown at finalization now and then aborts a task ("terminate called
    without an active exception"); under srun that fails the whole step and hides the verdict. The trainer
    leaves the same way (workloads/trainer/train.py).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say to it
            pass
    os._exit(code)


def run_checks(profile: Profile, node: str, root: Path) -> list[Result]:
    """Every check in order on every task (the collectives line up); a check that errors fails, naming why."""
    out = []
    for c in profile.checks:
        try:
            out.append(RUN[c.check](c, node, root))
        except Exception as e:  # a broken node must give a report, not a traceback
            out.append(Result(node, c.check, False, None, None, detail=f"error: {type(e).__name__}: {e}"))
    return out


def report(results: list[Result]) -> tuple[bool, str]:
    """(all passed, text): failing nodes first and named, then every figure."""
    bad = [r for r in results if not r.ok]
    nodes = sorted({r.node for r in bad})
    head = (f"vet FAILED on {len(nodes)} node(s): {', '.join(nodes)}" if bad
            else f"vet passed on {len({r.node for r in results})} node(s)")
    lines = [head] + [f"  FAIL {r.line()}" for r in bad] + [f"  ok   {r.line()}" for r in results if r.ok]
    return not bad, "\n".join(lines)


def vet(profile: Profile) -> tuple[bool, str | None]:
    """Vet this task's node; returns (all nodes passed, report on task 0 else None)."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    root = Path(os.environ.get("STRATA_NODE_ROOT") or "/")
    joined = init_distributed()
    results = run_checks(profile, node, root)
    if joined:
        import torch.distributed as dist

        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results)
        rank = dist.get_rank()
        dist.destroy_process_group()
        results = [r for part in gathered for r in part]
        ok, text = report(results)
        return ok, text if rank == 0 else None
    return report(results)


def node_local(profile: Profile) -> Profile:
    """The profile's checks that measure this node alone, in order."""
    return profile.model_copy(update={"checks": tuple(c for c in profile.checks if c.check not in TASK_CHECKS)})


def vet_node(profile: Profile) -> tuple[bool, str, list[Result]]:
    """The node-local checks on this node (STRATA_NODE_ROOT, SLURMD_NODENAME), no other task joined."""
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    results = run_checks(node_local(profile), node, Path(os.environ.get("STRATA_NODE_ROOT") or "/"))
    ok, text = report(results)
    return ok, text, results


def main(argv: list[str] | None = None) -> int:
    """`python -m services.vetting [--node-local] [--profile llm]`: exit 1 if a check failed, 2 on a bad profile."""
    from services.vetting.profile import ProfileError, load_profile

    ap = argparse.ArgumentParser(prog="python -m services.vetting")
    ap.add_argument("--profile", default="llm", help="bundled profile name or a YAML path")
    ap.add_argument("--node-local", action="store_true", help="only the checks that measure this node alone")
    a = ap.parse_args(argv)
    try:
        prof = load_profile(a.profile)
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.node_local:
        ok, text = vet(prof)
        if text:
            print(text, flush=True)
        return 0 if ok else 1
    ok, text, results = vet_node(prof)
    print(text, flush=True)
    if not ok:  # one line, the failed figures: the prolog part's detail
        print("; ".join(r.figure() for r in results if not r.ok), file=sys.stderr)
    return 0 if ok else 1
