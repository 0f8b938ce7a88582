"""Install the container-engine vService of some vClusters with the `container_engine` playbook.

Called by `strata up` (every vCluster that offers `container-engine`) and `strata engine install`.
The role runs `python -m user_envs.install` on each vCluster, so this module imports nothing of user_envs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.ansible.runner import PlaybookRun, run_playbook


def install_container_engine(site_file: Path, state_root: Path, ansible_dir: Path,
                             vclusters: list[str]) -> PlaybookRun | None:
    """Run the container_engine role with one inventory host per vCluster; None when there are none."""
    if not vclusters:
        return None
    hosts = {v: {"strata_python": sys.executable, "strata_site_file": str(Path(site_file).resolve()),
                 "strata_state": str(Path(state_root).resolve())} for v in vclusters}
    ansible_dir.mkdir(parents=True, exist_ok=True)
    return run_playbook("container_engine", hosts, ansible_dir, "engine")
