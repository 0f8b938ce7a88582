"""What the IaC commands share: consoles, the --site option, error handling, SiteOps for a site file."""

from __future__ import annotations

import errno
from functools import wraps

import typer
from rich.console import Console
from rich.markup import escape

from vocab.layout import EMBEDDED_SITE, state_root
from vocab.site import SiteError, load_site

console = Console(emoji=False)  # external text (Slurm's NtasksPerN:B:S:C) is not emoji codes
err = Console(stderr=True, soft_wrap=True, emoji=False)
DEFAULT_SITE = EMBEDDED_SITE


def site_option() -> str:
    return typer.Option(DEFAULT_SITE, "--site", help="Site file (default: the embedded local site).",
                        envvar="STRATA_SITE", show_default=False)


_OS_HINTS = {
    errno.ENOSPC: "free space on that filesystem, then re-run: every step is journaled and a re-run finishes it",
    errno.EDQUOT: "free space within your quota, then re-run: every step is journaled and a re-run finishes it",
    errno.EACCES: "run strata as root (it starts and stops the site's daemons as root), or fix that path's permissions",
    errno.EPERM: "run strata as root (it starts and stops the site's daemons as root), or fix that path's permissions",
    errno.EROFS: "that filesystem is mounted read-only: remount it read-write, or set STRATA_STATE to a writable dir",
    errno.ENOENT: "check that the path exists (or that STRATA_STATE points at the site's state dir)",
}


def os_error_line(e: OSError) -> str:
    """One line for an OS error: what failed, where, and what to do (never a traceback)."""
    what = e.strerror or str(e)
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
    hint = _OS_HINTS.get(e.errno, "fix the cause, then re-run")
    return f"{what}{f': {where}' if where else ''}; {hint}"


def handle_errors(fn):
    """User errors exit with a message, no traceback: 2 for bad input, 1 for a failed operation."""
    from iac.ops import StateError
    from services.ansible.runner import AnsibleError
    from services.slurm.control import SlurmError
    from services.slurm.daemons import DaemonError
    from iac.drivers.ssh import SshError

    @wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except SiteError as e:
            err.print(f"[red]error:[/] invalid site file\n{e}", markup=True, highlight=False)
            raise typer.Exit(2)
        except (DaemonError, StateError, AnsibleError, SlurmError, SshError) as e:
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1)
        except OSError as e:
            err.print(f"[red]error:[/] {escape(os_error_line(e))}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def ops_for(site_path: str):
    from iac.ops import SiteOps

    site = load_site(site_path)
    return SiteOps(site, state_root(), say=lambda m: console.print(m, highlight=False))
