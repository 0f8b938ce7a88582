"""The `strata` command: a thin composition root; each layer owns and registers its own subcommands."""

from __future__ import annotations

import os
import sys

import typer

from iac import cli as iac_cli
from services import cli as services_cli
from strata import train as train_cli
from user_envs import cli as user_envs_cli
from workloads.trainer.cli import app as trainer_app
from workloads.trainer.tokenize import tokenize_command

app = typer.Typer(
    help="strata: vClusters as code. Site file -> vClusters on real Slurm; node moves that lose nothing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def options(site: str = typer.Option(None, "--site", help="Site file for every command (as STRATA_SITE); "
                                     "default: the embedded local site.", show_default=False)):
    """Global options may come before the command too: `strata --site X plan` is `strata plan --site X`."""
    if site is not None:
        os.environ["STRATA_SITE"] = site  # what each command's own --site falls back to; theirs still wins


iac_cli.register(app)
services_cli.register(app)
user_envs_cli.register(app)
train_cli.register(app)
app.command("tokenize", help="Tokenize Parquet/JSONL shards into Megatron .bin/.idx.")(tokenize_command)
app.add_typer(trainer_app, name="trainer", help="The bundled trainer run here: train, plot, export-hf.")


def main() -> None:
    try:
        app()
    except OSError as e:  # the last guard: a command without its own handling still gets one line
        from iac.cli_common import os_error_line

        print(f"error: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
