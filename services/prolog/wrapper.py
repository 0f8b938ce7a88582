"""The small scripts slurm.conf names as Prolog=, Epilog= and TaskProlog= (rendered per vCluster, pure).

Slurm runs them with a bare environment: they set where the node root and node dir are and which slurm.conf
to use (the prolog drains through `scontrol`), then exec the runner with the Python that has strata installed.
The TaskProlog is plain shell: it runs once per task, and its `export` lines go into the task's environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.prolog.jobcache import cache_env
from services.slurm.render import MANAGED

WRAPPERS = {"prolog": "prolog.sh", "epilog": "epilog.sh", "taskprolog": "taskprolog.sh"}
_WHAT = {
    "prolog": "runs the numbered prolog parts of services/prolog.",
    "epilog": "runs the numbered epilog parts of services/prolog.",
    "taskprolog": "exports the job's node-local cache dirs to each task.",
}


@dataclass(frozen=True)
class WrapperInputs:
    vcluster: str
    slurm_conf: str
    python: str
    pythonpath: str  # where the `services` package lives
    node_dir: str  # shell words; may use $SLURMD_NODENAME (the local site keeps one dir per node)
    node_root: str  # shell words; "/" on a real node


def _head(w: WrapperInputs, kind: str) -> list[str]:
    return [
        "#!/bin/sh",
        MANAGED,
        f"# {kind} of vCluster {w.vcluster}: {_WHAT[kind]} See docs/services.md.",
        f'STRATA_NODE_DIR="{w.node_dir}"',
        f'STRATA_NODE_ROOT="{w.node_root}"',
        "export STRATA_NODE_DIR STRATA_NODE_ROOT",
    ]


def render_wrapper(w: WrapperInputs, kind: str) -> str:
    """The text of one wrapper: kind is prolog, epilog or taskprolog."""
    if kind == "taskprolog":
        cache = '${STRATA_NODE_ROOT%/}/tmp/strata-job-$SLURM_JOB_ID'
        exports = [f'    echo "export {k}={v}"' for k, v in sorted(cache_env(cache).items())]
        body = [
            'echo "export STRATA_NODE_ROOT=$STRATA_NODE_ROOT"',
            f'if [ -d "{cache}" ]; then',
            *exports,
            "fi",
        ]
    else:
        assert kind in ("prolog", "epilog"), kind
        body = [
            f'export SLURM_CONF="{w.slurm_conf}"',
            'export PATH="/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"',
            f'export PYTHONPATH="{w.pythonpath}"',
            f'exec "{w.python}" -m services.prolog run {kind}',
        ]
    return "\n".join(_head(w, kind) + body) + "\n"
