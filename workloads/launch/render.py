"""Render the sbatch script that trains on a Slurm cluster (pure: returns text, submits nothing).

    script = render_sbatch(job_name="tiny", nodes=2, ntasks_per_node=1, config="tiny", workdir="/repo")
    subprocess.run(["sbatch"], input=script, text=True)

The job resumes from its run directory's latest checkpoint by itself, so the same script can be chained
(`sbatch` it N times: `--dependency=singleton` runs them one after another) or requeued on preemption.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2

TEMPLATE = Path(__file__).with_name("train.sbatch.j2")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_sbatch(*, job_name: str, nodes: int, ntasks_per_node: int, config: str, workdir: str | Path,
                  overrides: Sequence[str] = (), python: str = "python", run_dir: str | None = None,
                  constraint: str | None = None, environment: str | None = None, partition: str | None = None,
                  account: str | None = None, time_limit: str | None = None, cpus_per_task: int | None = None,
                  gpus_per_node: int | None = None, signal_lead_s: int = 90, requeue: bool = True,
                  output: str | None = None, master_addr: str | None = None,
                  env: Mapping[str, str] | None = None) -> str:
    """The sbatch script text for a training job.

    Args:
        job_name: Slurm job name; jobs of the same name run one at a time (singleton).
        nodes, ntasks_per_node: allocation shape; one task = one trainer rank (one per GPU).
        config: trainer preset (tiny, 125m, 1b, 8b, 70b) or .toml path; `overrides` are --section.key=value.
        workdir: repository root on the cluster (the job runs `python -m workloads.trainer.train` there).
        run_dir: the run's directory (checkpoints, metrics); passed as --job.run_dir when set.
        constraint: Slurm features, e.g. 'thp_never&nvidia_vboost_enabled'.
        environment: container environment (EDF name or path) for `--environment`.
        signal_lead_s: seconds before the time limit at which USR1 asks for a final checkpoint.
        requeue: requeue the job after a preemption checkpoint (the next run resumes from it).
        master_addr: rendezvous host; None: the first node of the allocation.
        env: extra environment variables exported before srun.
    """
    if nodes < 1 or ntasks_per_node < 1:
        raise ValueError("nodes and ntasks_per_node must be >= 1")
    args = ["--config", config, f"--job.name={job_name}"]
    if run_dir is not None:
        args.append(f"--job.run_dir={run_dir}")
    args.extend(overrides)
    return _environment().get_template(TEMPLATE.name).render(
        job_name=job_name, nodes=nodes, ntasks_per_node=ntasks_per_node, cpus_per_task=cpus_per_task,
        gpus_per_node=gpus_per_node, partition=partition, account=account, time_limit=time_limit,
        constraint=constraint, environment=environment, output=output or f"{job_name}-%j.out",
        signal_lead_s=signal_lead_s, requeue=requeue, workdir=str(workdir), master_addr=master_addr,
        env=sorted((env or {}).items()), python=python, train_args=" ".join(shlex.quote(a) for a in args))
