"""The `strata` command: a thin composition root; each layer owns and registers its own subcommands."""

from __future__ import annotations

from functools import wraps

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


def refuse_outsiders(command):
    """Wrap `strata env VCLUSTER` (the IaC layer's command): one clear line, exit 2, for a caller the
    vCluster's access groups leave out, instead of a SLURM_CONF whose munge socket refuses them."""
    @wraps(command)
    def guarded(vcluster: str, site: str, **kw):
        from iac.site import SiteError, load_site
        from services.slurm.access import refusal

        try:
            s = load_site(site)
        except SiteError:
            s = None  # the command itself reports it
        if s is not None and vcluster in s.vclusters and (why := refusal(s, vcluster)):
            typer.echo(f"error: {why}", err=True)
            raise typer.Exit(2)
        return command(vcluster=vcluster, site=site, **kw)
    return guarded


iac_cli.register(app)
for _info in iac_cli.env_app.registered_commands:
    if _info.name == "vcluster":
        _info.callback = refuse_outsiders(_info.callback)
services_cli.register(app)
user_envs_cli.register(app, env_app=iac_cli.env_app)
train_cli.register(app)
app.command("tokenize", help="Tokenize Parquet/JSONL shards into Megatron .bin/.idx.")(tokenize_command)
app.add_typer(trainer_app, name="trainer", help="The bundled trainer run here: train, plot, export-hf.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
