"""Typer app for the trainer: `train`, `plot`, `export-hf`.

Mount it in another CLI with `app.add_typer(workloads.trainer.cli.app, name="trainer")`, or run it
directly: `python -m workloads.trainer.cli train --config tiny --training.max_steps=5`.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Apertus-style LLM trainer: train, plot metrics, export to Hugging Face.",
                  no_args_is_help=True, add_completion=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context,
          config: str = typer.Option(None, "--config", "-c",
                                     help="Preset under workloads/trainer/configs (tiny, 125m, 1b, 8b, 70b) "
                                          "or a .toml path.")
          ) -> None:
    """Train; extra options override the config: --section.key=value (e.g. --training.max_steps=50)."""
    from .config import ConfigError, load_config
    from .train import run

    try:
        cfg = load_config(config, list(ctx.args))
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(run(cfg))


@app.command()
def plot(metrics: Path = typer.Argument(..., help="metrics.jsonl of a run (or the run directory)."),
         out: Path = typer.Option(None, "--out", "-o", help="PNG to write; default: next to the metrics file.")
         ) -> None:
    """Plot loss and throughput (tokens/s, MFU when known) against the step into a PNG."""
    from .components.metrics import plot_metrics

    if metrics.is_dir():
        metrics = metrics / "metrics.jsonl"
    if not metrics.is_file():
        typer.echo(f"error: {metrics} does not exist", err=True)
        raise typer.Exit(1)
    try:
        png = plot_metrics(metrics, out or metrics.with_suffix(".png"))
    except (ValueError, KeyError, TypeError) as e:  # empty, not JSON Lines, or lines without step/loss
        typer.echo(f"error: {metrics}: not a trainer metrics file ({e!r}); give a run's metrics.jsonl", err=True)
        raise typer.Exit(2)
    typer.echo(str(png))


@app.command("export-hf")
def export_hf(checkpoint: Path = typer.Argument(..., help="Run dir, checkpoint dir (follows 'latest') or step dir."),
              out: Path = typer.Argument(..., help="Output directory for config.json + safetensors."),
              dtype: str = typer.Option("float32", help="float32 or bfloat16."),
              tokenizer: Path = typer.Option(None, help="tokenizer.json to copy next to the weights.")) -> None:
    """Write a Hugging Face ApertusForCausalLM checkpoint that transformers loads."""
    import torch

    from .components.train_state import CheckpointError
    from .export_hf import export_checkpoint

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        typer.echo(f"error: --dtype must be one of {', '.join(dtypes)}", err=True)
        raise typer.Exit(2)
    # checked before the weights are written, so a refusal leaves no half-exported directory
    if tokenizer is not None and not tokenizer.is_file():
        typer.echo(f"error: --tokenizer {tokenizer} does not exist; pass a tokenizer.json file", err=True)
        raise typer.Exit(2)
    if out.exists() and not out.is_dir():
        typer.echo(f"error: {out} exists and is not a directory; give a directory for the export", err=True)
        raise typer.Exit(2)
    try:
        path = export_checkpoint(checkpoint, out, dtype=dtypes[dtype], tokenizer=tokenizer)
    except CheckpointError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(str(path))


def main() -> None:
    """Run the typer app."""
    app()


if __name__ == "__main__":
    main()
