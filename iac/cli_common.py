"""What the IaC commands share: consoles, the --site option, error handling, SiteOps for a site file."""

from __future__ import annotations

from functools import wraps

import typer
from rich.console import Console

from services.layout import state_root
from iac.site import SiteError, load_site

console = Console()
err = Console(stderr=True, soft_wrap=True)
DEFAULT_SITE = "sites/local.yaml"


def site_option() -> str:
    return typer.Option(DEFAULT_SITE, "--site", help="Site file.", envvar="STRATA_SITE")


def handle_errors(fn):
    """User errors exit with a message, no traceback: 2 for bad input, 1 for a failed operation."""
    from iac.ops import StateError
    from services.ansible.runner import AnsibleError
    from services.slurm.control import SlurmError
    from services.slurm.daemons import DaemonError

    @wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except SiteError as e:
            err.print(f"[red]error:[/] invalid site file\n{e}", markup=True, highlight=False)
            raise typer.Exit(2)
        except (DaemonError, StateError, AnsibleError, SlurmError) as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def ops_for(site_path: str):
    from iac.ops import SiteOps

    site = load_site(site_path)
    return SiteOps(site, state_root(), say=lambda m: console.print(m, highlight=False))
