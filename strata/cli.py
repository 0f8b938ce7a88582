"""The `strata` command: a thin composition root; each layer owns and registers its own subcommands."""

from __future__ import annotations

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
iac_cli.register(app)
services_cli.register(app)
user_envs_cli.register(app, env_app=iac_cli.env_app)
train_cli.register(app)
app.command("tokenize", help="Tokenize Parquet/JSONL shards into Megatron .bin/.idx.")(tokenize_command)
app.add_typer(trainer_app, name="trainer", help="The bundled trainer run here: train, plot, export-hf.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
