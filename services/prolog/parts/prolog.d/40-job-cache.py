"""A node-local per-job cache dir for Triton/TorchInductor (the TaskProlog exports it to the job)."""

from services.prolog import jobcache


def run(ctx):
    uid, gid = ctx.env.get("SLURM_JOB_UID"), ctx.env.get("SLURM_JOB_GID")
    d = jobcache.create(ctx.root, ctx.job_id, int(uid) if uid else None, int(gid) if gid else None)
    return str(d)
