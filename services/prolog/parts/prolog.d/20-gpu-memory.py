"""Every GPU must have >= 90% of its memory allocatable; else fail (the runner drains the node, naming GPU and figure)."""

from services.prolog.gpus import memory_problems, read_gpus
from services.prolog.runner import PartFailed


def run(ctx):
    gpus = read_gpus(ctx.root)
    if not gpus:
        return "skipped: no GPUs"
    bad = memory_problems(gpus)
    if bad:
        raise PartFailed(", ".join(bad))
    return f"{len(gpus)} GPUs, min {min(g.free_share for g in gpus):.0%} free"
