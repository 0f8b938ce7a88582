"""The Pulumi stack's configuration, read in this one place.

    pulumi config set strata:site sites/local.yaml      # site file (default sites/local.yaml)
    pulumi config set strata:stateDir /var/lib/strata   # optional; default $STRATA_STATE or /var/lib/strata
    pulumi config set strata:moveTimeout 600            # seconds a move waits for the node's jobs to end
    pulumi config set strata:force false                # true: requeue the node's jobs instead of waiting

Relative paths are taken from the project root (the folder of Pulumi.yaml), so the program finds the site
file whichever folder Pulumi starts it in. The dynamic provider gets them as absolute paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_SITE = "sites/local.yaml"
DEFAULT_MOVE_TIMEOUT = 600.0


@dataclass(frozen=True)
class StackConfig:
    """What one stack of the program needs: which site, where its state lives, how moves behave."""

    site_path: Path
    """Absolute path of the site file."""
    state_dir: Path
    """Absolute state dir; the site's state is `<state_dir>/<site>/`."""
    move_timeout: float = DEFAULT_MOVE_TIMEOUT
    """Seconds a move waits for running jobs to end before it stops, leaving the node drained in its source."""
    force: bool = False
    """Requeue the jobs of a moving node instead of waiting (like `strata apply --force`)."""


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding Pulumi.yaml; else `start`."""
    here = (start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / "Pulumi.yaml").is_file()), here)


def resolve_config(
    site: str | None = None,
    state_dir: str | None = None,
    move_timeout: float | None = None,
    force: bool | None = None,
    root: Path | None = None,
) -> StackConfig:
    """Fill in defaults and make paths absolute (relative ones are taken from the project root)."""
    from vocab.layout import state_root

    base = root or project_root()
    timeout = DEFAULT_MOVE_TIMEOUT if move_timeout is None else float(move_timeout)
    if timeout <= 0:
        raise ValueError(f"strata:moveTimeout must be a positive number of seconds (got {move_timeout})")
    return StackConfig(
        site_path=(base / (site or DEFAULT_SITE)).resolve(),
        state_dir=(base / state_dir).resolve() if state_dir else state_root().resolve(),
        move_timeout=timeout,
        force=bool(force),
    )


def read_config() -> StackConfig:
    """The `strata:*` keys of the current stack."""
    import pulumi

    cfg = pulumi.Config("strata")
    return resolve_config(
        site=cfg.get("site"),
        state_dir=cfg.get("stateDir"),
        move_timeout=cfg.get_float("moveTimeout"),
        force=cfg.get_bool("force"),
    )
