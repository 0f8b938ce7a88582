"""`strata train`: schedule the bundled trainer onto a vCluster (render the sbatch script, submit it).

Composition only: where the vCluster's Slurm is comes from the IaC layer, the script from
`workloads/launch/render.py`; the trainer itself never imports the control plane.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from iac.cli_common import DEFAULT_SITE, handle_errors
from vocab.layout import Layout, state_root
from vocab.site import load_site
from services.slurm.control import SlurmClient, SlurmError
from strata.train_checks import TrainRequestError, capacity_of, check_nodes

REPO = Path(__file__).resolve().parent.parent
console = Console(emoji=False)  # Slurm writes ":B:" in NtasksPerN:B:S:C, which rich would draw as an emoji
err = Console(stderr=True, soft_wrap=True, emoji=False)


def read_steps(metrics: Path) -> list[dict]:
    """The per-step rows of a run's metrics.jsonl (none yet: empty)."""
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summarize(rows: list[dict], after: int) -> str:
    """What one job did: the steps past `after` (where the run stood when it was submitted), their loss
    and median tokens/s (the last step's alone is noise)."""
    mine = [r for r in rows if r["step"] > after]
    if not mine:
        return (f"trained no step: the run was already at step {after} (a job resumes its run dir); "
                "pass --training.max_steps=N to go further, or a new --run-dir for a fresh run")
    first, last = mine[0], mine[-1]
    tps = statistics.median(r.get("tokens_per_s", 0.0) for r in mine)
    resumed = f" (resumed at step {after})" if after else ""
    return (f"trained steps {first['step']}..{last['step']}{resumed}: loss {first['loss']:.3f} -> "
            f"{last['loss']:.3f}, median {tps:,.0f} tokens/s over {len(mine)} steps")


def container_path(mounts, host: Path) -> str | None:
    """Where `host` appears inside a container with these EDF mounts (the deepest writable mount holding
    it); None when no writable mount does."""
    best = None
    for m in mounts:
        src = Path(m.src).resolve()
        if (host == src or src in host.parents) and not m.readonly:
            if best is None or len(src.parts) > len(Path(best[0]).parts):
                best = (str(src), m.dst)
    if best is None:
        return None
    rel = host.relative_to(best[0])
    return str(Path(best[1]) / rel) if rel.parts else best[1]


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def train(
        ctx: typer.Context,
        vcluster: str = typer.Option("clariden", help="vCluster to run on."),
        nodes: int = typer.Option(1, min=1, help="Nodes (one trainer rank per node)."),
        config: str = typer.Option("tiny", help="Trainer preset or .toml path."),
        name: str = typer.Option(None, help="Job name (jobs of one name run one after another); default: the config."),
        run_dir: Path = typer.Option(None, help="Checkpoints + metrics; default: <state dir>/runs/<name>."),
        constraint: str = typer.Option(None, "-C", "--constraint", help="Slurm features, e.g. 'thp_never'."),
        partition: str = typer.Option(None, "-p", "--partition"),
        environment: str = typer.Option(None, "--environment", help="EDF to run the trainer's tasks in (as "
                                        "`srun --environment`); --run-dir must lie in one of its writable mounts."),
        wait: bool = typer.Option(False, help="Wait for the job to end and print its loss."),
        site: str = typer.Option(DEFAULT_SITE, "--site", envvar="STRATA_SITE"),
    ):
        """Submit the trainer to a vCluster; extra --section.key=value options override its config."""
        from workloads.launch.render import render_sbatch

        s = load_site(site)
        if vcluster not in s.vclusters:
            err.print(f"error: no vCluster {vcluster!r} in {site}; known: {', '.join(s.vclusters)}")
            raise typer.Exit(2)
        from services.slurm.access import refusal

        if why := refusal(s, vcluster):  # its munge socket would refuse sbatch too, less clearly
            err.print(f"error: {why}", highlight=False)
            raise typer.Exit(2)
        layout = Layout.of(s, state_root())
        try:  # before anything is written or submitted: a job that cannot fit would pend forever
            check_nodes(capacity_of(s, vcluster, layout.slurm_conf(vcluster)), vcluster, nodes, partition, site)
        except TrainRequestError as e:
            err.print(f"error: {e}", highlight=False)
            raise typer.Exit(2)
        if not layout.slurm_conf(vcluster).is_file():  # else sbatch retries a missing file for a minute
            err.print(f"error: vCluster {vcluster} is not up (no {layout.slurm_conf(vcluster)}); run `strata up`",
                      highlight=False)
            raise typer.Exit(1)
        name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(config).stem)
        run_dir = (run_dir or layout.root / "runs" / name).resolve()
        python, task_run_dir = sys.executable, str(run_dir)
        if environment:  # the tasks run in the EDF's container: its python, the run dir as mounted there
            from user_envs.edf import EdfError
            from user_envs.resolve import resolve

            try:
                edf = resolve(environment)
            except EdfError as e:
                err.print(f"error: {e}", highlight=False)
                raise typer.Exit(2)
            task_run_dir = container_path(edf.mounts, run_dir)
            if task_run_dir is None:
                mounts = ", ".join(f"{m.src}:{m.dst}" for m in edf.mounts) or "none"
                err.print(f"error: run dir {run_dir} is not in a writable mount of EDF {environment!r} "
                          f"(mounts: {mounts}); pass --run-dir under one of them", highlight=False)
                raise typer.Exit(2)
            python = "python"  # found on the container's PATH (the EDF's [env])
        run_dir.mkdir(parents=True, exist_ok=True)
        script = render_sbatch(
            job_name=name, nodes=nodes, ntasks_per_node=1, config=config, workdir=REPO,
            overrides=list(ctx.args), python=python, run_dir=task_run_dir, constraint=constraint,
            environment=environment, partition=partition, output=str(run_dir / "slurm-%j.out"),
            # emulated nodes are named nid00x but all listen on this host
            master_addr="127.0.0.1" if s.spec.driver == "local" else None,
        )
        (run_dir / "job.sbatch").write_text(script)
        slurm = SlurmClient(layout.slurm_conf(vcluster))
        metrics = run_dir / "metrics.jsonl"
        before = max((r["step"] for r in read_steps(metrics)), default=0)  # a job resumes its run dir
        try:
            job = slurm.submit(script)
        except SlurmError as e:
            err.print(f"error: on {vcluster}: {e} (is the site up? `strata up`)", highlight=False, markup=False)
            raise typer.Exit(1)
        console.print(f"submitted job {job} to {vcluster} ({nodes} node(s), config {config}); run dir {run_dir}")
        if not wait:
            return
        with console.status(f"job {job} on {vcluster}") as status:
            while True:
                info = slurm.job(job)
                state = info.get("JobState", "UNKNOWN")
                status.update(f"job {job} on {vcluster}: {state} {info.get('NodeList', '')}")
                if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                    break
                time.sleep(1)
        console.print(f"job {job}: {state}, exit {info.get('ExitCode')}; {summarize(read_steps(metrics), before)}",
                      highlight=False, markup=False)
        if state != "COMPLETED":
            log = sorted(run_dir.glob(f"slurm-{job}.out"))
            if log:
                err.print(log[0].read_text()[-2000:])
            raise typer.Exit(1)
