"""Remove the job's node-local cache dir."""

from services.prolog import jobcache


def run(ctx):
    return "removed" if jobcache.remove(ctx.root, ctx.job_id) else "none"
