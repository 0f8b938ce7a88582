"""`strata run|vservices|engine install|env show`: the user-environment layer's commands.

Mounted by the composition root (strata/cli.py): `user_envs.cli.register(app)`.
"""

from __future__ import annotations

import json
import os
from functools import wraps
from pathlib import Path

import typer

from rich.console import Console

from vocab.layout import EMBEDDED_SITE, Layout, state_root
from vocab.site import SiteError, load_site

HOW_TO_REACH = {
    "slurm": "export SLURM_CONF={slurm_conf}   (or: eval $(strata env {vc})); then sinfo, sbatch, srun",
    "container-engine": "EDFs in $EDF_PATH or ~/.edf; `strata run --environment=NAME -- CMD` or "
                        "`srun --environment=NAME CMD`; engine config {engine_json}",
    "jupyter": "not deployed on this site yet",
    "firecrest": "not deployed on this site yet",
}


console = Console(emoji=False)  # EDF and Slurm text is printed verbatim
err = Console(stderr=True, soft_wrap=True, emoji=False)


def site_option() -> str:
    return typer.Option(EMBEDDED_SITE, "--site", help="Site file (default: the embedded local site).",
                        envvar="STRATA_SITE", show_default=False)


def user_errors(fn):
    """Refusals exit with the message (file, key, fix), no traceback: 2 for bad input (EDF, engine policy,
    site file), 1 for a failed install."""
    from services.ansible.runner import AnsibleError
    from user_envs.edf import EdfError
    from user_envs.engine import EngineError
    from user_envs.install import InstallError

    @wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except SiteError as e:
            err.print(f"[red]error:[/] invalid site file\n{e}", highlight=False)
            raise typer.Exit(2)
        except (EdfError, EngineError) as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        except (InstallError, AnsibleError) as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def _vcluster_of(site, vcluster: str | None) -> str:
    """--vcluster, else the one whose slurm.conf SLURM_CONF names."""
    if vcluster is None and os.environ.get("SLURM_CONF"):
        conf = Path(os.environ["SLURM_CONF"])
        if conf.parent.name == "etc" and conf.parent.parent.name in site.vclusters:
            vcluster = conf.parent.parent.name
    if vcluster is None:
        err.print("[red]error:[/] which vCluster? pass --vcluster NAME or `eval $(strata env NAME)` first")
        raise typer.Exit(2)
    if vcluster not in site.vclusters:
        err.print(f"[red]error:[/] no vCluster {vcluster!r} in {site.path}; known: {', '.join(site.vclusters)}")
        raise typer.Exit(2)
    return vcluster


def _refuse_outsiders(site, vc: str) -> None:
    """Exit 2 with one line when the vCluster's access groups leave the caller out (munge would refuse too,
    less clearly)."""
    from services.slurm.access import refusal

    if why := refusal(site, vc):
        err.print(f"[red]error:[/] {why}", highlight=False)
        raise typer.Exit(2)


def _warn_if_closed(site, vc: str) -> None:
    """Say so when users other than root cannot run the interpreter the SPANK plugin execs for them."""
    from user_envs.install import closed_to_users, engine_python

    python = engine_python(site, vc)
    if why := closed_to_users(python):
        key = f"platforms.{site.platform_of[vc]}.vclusters.{vc}.container_engine.python"
        err.print(f"[yellow]warning:[/] on {vc}, `srun --environment` works for root only: the engine's python "
                  f"{python} cannot be run by other users ({why}). Fix: set {key} in {site.path} to an "
                  "interpreter every user can run with strata importable, or install strata under a "
                  f"world-readable prefix; then `strata engine install {vc}`", highlight=False)


def install_engine(site_path: str, vclusters: list[str]) -> dict[str, int]:
    """Run the container_engine role for `vclusters` (inventory host = vCluster name)."""
    from services.ansible.engine import install_container_engine

    site = load_site(site_path)
    run = install_container_engine(Path(site_path), state_root(), Layout.of(site, state_root()).ansible_dir,
                                   vclusters)
    return run.changed if run else {}


def register(app: typer.Typer) -> None:
    """Mount the user-environment commands on the root app (EDFs under `strata edf`)."""
    edf_app = typer.Typer(no_args_is_help=True, help="EDFs (Environment Definition Files): `strata edf show NAME`.")

    @edf_app.command("show")
    @user_errors
    def show(name: str = typer.Argument(..., help="EDF name (EDF_PATH, then ~/.edf) or path.")):
        """Print the fully resolved EDF NAME (bases merged, variables expanded)."""
        from user_envs.resolve import resolve

        print(resolve(name).to_toml(), end="")

    @app.command(context_settings={"allow_interspersed_args": False})
    @user_errors
    def run(
        cmd: list[str] = typer.Argument(..., help="The command to run in the container (after --)."),
        environment: str = typer.Option(..., "--environment", help="EDF name or path."),
        vcluster: str = typer.Option(None, "--vcluster", help="Default: the vCluster SLURM_CONF points at."),
        site: str = site_option(),
    ):
        """Run CMD in the container described by an EDF, with the vCluster's hooks and mount policy."""
        from user_envs.engine import run_named
        from user_envs.install import engine_dir

        s = load_site(site)
        vc = _vcluster_of(s, vcluster)
        _refuse_outsiders(s, vc)
        if "container-engine" not in s.vclusters[vc].vservices:
            err.print(f"[red]error:[/] vCluster {vc} does not offer the container-engine vService; "
                      f"add it to its vservices in {site}")
            raise typer.Exit(2)
        raise typer.Exit(run_named(environment, cmd, engine_dir(Layout.of(s, state_root()), vc) / "engine.json"))

    @app.command()
    @user_errors
    def vservices(vcluster: str, site: str = site_option(),
                  as_json: bool = typer.Option(False, "--json", help="Machine-readable.")):
        """The vServices a vCluster offers and how to reach each."""
        from user_envs.install import engine_dir

        s = load_site(site)
        vc = _vcluster_of(s, vcluster)
        layout = Layout.of(s, state_root())
        facts = {"vc": vc, "slurm_conf": layout.slurm_conf(vc), "engine_json": engine_dir(layout, vc) / "engine.json"}
        rows = [{"vservice": v, "reach": HOW_TO_REACH[v].format(**facts)} for v in s.vclusters[vc].vservices]
        if as_json:
            print(json.dumps({"vcluster": vc, "vservices": rows}, indent=2))
            return
        print(f"vCluster {vc} offers:")
        for r in rows:
            print(f"  {r['vservice']:17} {r['reach']}")
        if "container-engine" in s.vclusters[vc].vservices:
            _warn_if_closed(s, vc)

    engine_app = typer.Typer(no_args_is_help=True, help="The container-engine vService.")

    @engine_app.command("install")
    @user_errors
    def install(vclusters: list[str] = typer.Argument(None, help="Default: every vCluster offering it."),
                site: str = site_option()):
        """Install the engine (hooks, allowlist, SPANK plugin, plugstack.conf) for vClusters, via Ansible."""
        s = load_site(site)
        names = vclusters or [v for v, vc in s.vclusters.items() if "container-engine" in vc.vservices]
        for v in names:
            _vcluster_of(s, v)
        changed = install_engine(site, names)
        console.print(f"container engine installed for {', '.join(names)}"
                      + (f" (changed: {', '.join(sorted(h for h, n in changed.items() if n))})" if any(changed.values()) else ""))
        for v in names:
            _warn_if_closed(s, v)

    @engine_app.command("image")
    @user_errors
    def image(kind: str = typer.Argument(..., help="busybox or trainer-base."),
              out: Path = typer.Argument(..., help="The SquashFS file to write.")):
        """Build a small SquashFS image from busybox-static (trainer-base: for `strata engine trainer-edf`)."""
        from user_envs.images import ImageError, build_image

        try:
            print(build_image(kind, out.resolve()))
        except ImageError as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(1)

    @engine_app.command("trainer-edf")
    def trainer_edf_cmd(image: Path = typer.Option(..., help="A trainer-base image."),
                        runs: Path = typer.Option(..., help="Host dir for run dirs, mounted at /runs.")):
        """Print an EDF that runs the bundled trainer from this repo's venv (save it as ~/.edf/trainer.toml)."""
        from user_envs.images import trainer_edf, trainer_mounts

        print(trainer_edf(image.resolve(), runs.resolve()), end="")
        err.print(f"the vCluster's container_engine.mount_allowlist must hold: {', '.join(trainer_mounts(runs.resolve()))}",
                  highlight=False)

    app.add_typer(engine_app, name="engine")
    app.add_typer(edf_app, name="edf")
