"""A node-local directory per job for compile caches (Triton, TorchInductor), exported to the job and removed after.

Shared file systems make these caches slow and racy across nodes; node-local `tmp` is what they want.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class BadJobId(ValueError):
    """SLURM_JOB_ID is not a job id: it must never become part of a path (`../..` would escape tmp)."""


def job_cache_dir(root: Path, job_id: str) -> Path:
    # a real check, not an assert: `python -O` strips asserts, and this one guards a path we create and remove
    if not (job_id.isascii() and job_id.isdigit()):
        raise BadJobId(f"SLURM_JOB_ID {job_id!r} is not a job id (digits only); no cache dir made from it")
    return root / "tmp" / f"strata-job-{job_id}"


def cache_env(cache: Path) -> dict[str, str]:
    """What the TaskProlog exports to every task of the job."""
    return {"TRITON_CACHE_DIR": f"{cache}/triton", "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor"}


def create(root: Path, job_id: str, uid: int | None, gid: int | None) -> Path:
    """Make the job's cache dir (0700, owned by the job's user)."""
    d = job_cache_dir(root, job_id)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for sub in cache_env(d).values():
        Path(sub).mkdir(mode=0o700, exist_ok=True)
    if uid is not None:
        for p in (d, *map(Path, cache_env(d).values())):
            os.chown(p, uid, gid if gid is not None else -1)
    return d


def remove(root: Path, job_id: str) -> bool:
    """Remove the job's cache dir; False if there was none."""
    d = job_cache_dir(root, job_id)
    if not d.exists():
        return False
    shutil.rmtree(d)
    return True
