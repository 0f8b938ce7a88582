"""Run our playbooks with ansible-runner: one private data dir per run, artifacts kept as the audit trail.

The run dir is `<base>/<ident>/` with `inventory/hosts.json`, `env/`, and `artifacts/<ident>/` (stdout,
events, status). `ident` is predictable: `<UTC time>-<playbook>-<label>`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYBOOKS = HERE / "playbooks"
ROLES = HERE / "roles"


class AnsibleError(Exception):
    """A playbook run failed; the message names host, task and the artifacts dir."""


@dataclass(frozen=True)
class PlaybookRun:
    ident: str
    dir: Path
    status: str
    changed: dict[str, int]  # host -> changed task count


def _env(repo_root: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        # ansible-runner calls ansible-playbook from PATH (rc 127 without the venv's bin)
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(repo_root),
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_FORKS": "16",
    }


def run_playbook(
    playbook: str,
    hosts: dict[str, dict],
    base_dir: Path,
    label: str,
    connection: str = "local",
) -> PlaybookRun:
    """Run playbooks/<playbook>.yml against `hosts` (name -> host vars); raise AnsibleError on failure."""
    import ansible_runner  # heavy: import only when a playbook runs

    ident = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**6:06d}-{playbook}-{label}"
    run_dir = base_dir / ident
    (run_dir / "inventory").mkdir(parents=True)
    inventory = {"all": {"hosts": {h: {"ansible_connection": connection, **v} for h, v in sorted(hosts.items())}}}
    (run_dir / "inventory" / "hosts.json").write_text(json.dumps(inventory, indent=2, sort_keys=True))
    repo_root = HERE.parent.parent
    r = ansible_runner.run(
        private_data_dir=str(run_dir),
        playbook=str(PLAYBOOKS / f"{playbook}.yml"),
        ident=ident,
        envvars=_env(repo_root),
        quiet=True,
        json_mode=False,
    )
    changed = {h: n for h, n in (r.stats or {}).get("changed", {}).items()}
    if r.status != "successful" or r.rc != 0:
        raise AnsibleError(_failure(r, run_dir, playbook))
    return PlaybookRun(ident, run_dir, r.status, changed)


def _failure(r, run_dir: Path, playbook: str) -> str:
    lines = []
    for ev in r.events:
        if ev.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            d = ev.get("event_data", {})
            res = d.get("res", {})
            msg = res.get("stderr") or res.get("msg") or ""
            lines.append(f"  {d.get('host')}: task '{d.get('task')}': {str(msg).strip()[-400:]}")
    detail = "\n".join(lines) or f"  rc={r.rc}, status={r.status}"
    return f"playbook {playbook} failed (artifacts: {run_dir}/artifacts):\n{detail}"
