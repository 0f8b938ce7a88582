"""`strata vet`, `strata score`: the service layer's commands (mounted by strata/cli.py)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True, emoji=False)


def register(app: typer.Typer) -> None:
    """Mount `strata vet` and `strata score` on the root app (`strata nodes` reads site state: iac/nodes_cli.py)."""

    @app.command()
    def vet(profile: str = typer.Option("llm", "--profile", help="Bundled profile name or a YAML path.")):
        """Vet the nodes of this allocation (`srun --ntasks-per-node=1 strata vet`); exit 1 names failing nodes."""
        from services.vetting.profile import ProfileError, load_profile
        from services.vetting.vet import exit_now, vet as run_vet

        try:
            prof = load_profile(profile)
        except ProfileError as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        ok, text = run_vet(prof)
        if text:
            print(text, flush=True)
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # joined a process group: leave without teardown
            exit_now(0 if ok else 1)
        if not ok:
            raise typer.Exit(1)

    register_score(app)


def register_score(app: typer.Typer) -> None:
    """Mount `strata score -- CMD` (kept apart from register() only for reading; register() calls it)."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def score(ctx: typer.Context,
              metrics: str = typer.Option("", "--metrics", envvar="STRATA_METRICS",
                                          help="Trainer metrics JSONL to read tokens/s and MFU from."),
              interval: float = typer.Option(0.5, "--interval", help="Seconds between samples."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
        """Run `-- CMD`, sample CPU/GPU/memory, print a score against the node's upper bounds; exits with CMD's code."""
        from services.vetting.score import render, run_scored, to_json

        command = list(ctx.args)
        if not command:
            err.print("[red]error:[/] give the command after `--`, e.g. strata score -- python train.py")
            raise typer.Exit(2)
        s = run_scored(command, Path(metrics) if metrics else None, interval)
        print(to_json(s) if as_json else render(s), flush=True)
        raise typer.Exit(s.exit_code)
