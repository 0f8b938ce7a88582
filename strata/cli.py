"""The `strata` command: a thin composition root; each layer owns and registers its own subcommands."""

from __future__ import annotations

import typer

from iac import cli as iac_cli

app = typer.Typer(
    help="strata: vClusters as code. Site file -> vClusters on real Slurm; node moves that lose nothing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
iac_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
