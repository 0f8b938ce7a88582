"""Reset THP to the node's default, and vBoost too if the job had asked for a vBoost feature."""

from services.prolog.gpus import set_vboost
from services.prolog.tuning import node_defaults, set_thp, wanted


def run(ctx):
    default = node_defaults(ctx.root)
    done = [set_thp(ctx.root, default.thp, ctx.emulated)]
    if wanted(ctx.constraints).vboost is not None:
        done.append(set_vboost(ctx.root, int(default.vboost)))
    return ", ".join(done)
