"""`make demo`: the main job on the embedded local site, step by step, with the commands shown.

Bring up the ML platform, move a node between vClusters while a job runs on it, train the tiny model
across two nodes of clariden, show the result, and move the node back.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from vocab.layout import Layout, state_root
from vocab.site import load_site

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "sites/local.yaml"
console = Console(emoji=False)  # Slurm's NtasksPerN:B:S:C is not an emoji code


def run(*args: str, env: dict | None = None, check: bool = True) -> str:
    """Show and run a command the way a user would type it."""
    shown = " ".join(shlex.quote(a) for a in args).replace(str(REPO) + "/", "")
    console.print(f"[bold cyan]$ {shown}[/]", highlight=False)
    r = subprocess.run(args, env=env, text=True, capture_output=True, cwd=REPO)
    out = (r.stdout + r.stderr).rstrip()
    if out:
        console.print(out, highlight=False, markup=False, emoji=False)  # external output, verbatim
    if check and r.returncode != 0:
        console.print(f"[red]demo step failed (exit {r.returncode})[/]")
        sys.exit(r.returncode)
    return r.stdout


def main() -> None:
    strata = str(Path(sys.executable).with_name("strata"))
    site = load_site(SITE)
    layout = Layout.of(site, state_root())
    moved = layout.root / "demo" / "local-moved.yaml"
    data = yaml.safe_load(SITE.read_text())
    vcs = data["platforms"]["ml"]["vclusters"]
    vcs["clariden"]["nodes"], vcs["bristen"]["nodes"] = "nid[001-005]", "nid[006-008]"
    clariden_env = {**os.environ, "SLURM_CONF": str(layout.slurm_conf("clariden"))}
    bristen_env = {**os.environ, "SLURM_CONF": str(layout.slurm_conf("bristen"))}

    console.rule("1. bring up the local site: platform ml (clariden, bristen), platform hpc (eiger)")
    run(strata, "up")
    run(strata, "status")

    console.rule("2. a job runs on nid006 in clariden")
    job = run("sbatch", "--parsable", "-w", "nid006", "-o", "/dev/null", "--wrap", "sleep 5; echo done", env=clariden_env).strip()
    run("squeue", env=clariden_env)

    console.rule("3. the site file moves nid006 from clariden to bristen: plan, then apply")
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_text(yaml.safe_dump(data, sort_keys=False))
    console.print(f"edited copy of sites/local.yaml: {moved} (clariden: nid[001-005], bristen: nid[006-008])")
    run(strata, "plan", "--site", str(moved))
    run(strata, "apply", "--site", str(moved))
    run("scontrol", "show", "job", job, env=clariden_env)
    run("sinfo", env=clariden_env)
    run("sinfo", env=bristen_env)

    console.rule("4. train the tiny Apertus model across 2 nodes of clariden (sbatch + srun, gloo)")
    # a fresh run each time: a second demo trains again instead of resuming a finished run
    run_dir = layout.root / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")
    run(strata, "train", "--site", str(moved), "--vcluster", "clariden", "--nodes", "2", "--config", "tiny",
        "--run-dir", str(run_dir), "--wait")
    run(strata, "trainer", "plot", str(run_dir))

    console.rule("5. move nid006 back: the site is again as sites/local.yaml says")
    run(strata, "apply")
    run(strata, "status")
    console.print(f"\n[green]demo done.[/] Explore: `source .venv/bin/activate; eval \"$(strata env clariden)\"; sinfo`; "
                  f"metrics: {run_dir}/metrics.jsonl, plot: {run_dir}/metrics.png; stop: `strata down`.")


if __name__ == "__main__":
    main()
