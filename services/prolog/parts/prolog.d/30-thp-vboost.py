"""Apply the THP mode and vBoost the job asked for with -C (features thp_*, nvidia_vboost_*); defaults otherwise."""

from services.prolog.gpus import set_vboost
from services.prolog.tuning import node_defaults, set_thp, wanted


def run(ctx):
    want, default = wanted(ctx.constraints), node_defaults(ctx.root)
    done = [set_thp(ctx.root, want.thp or default.thp, ctx.emulated)]
    if want.vboost is not None:  # only touched when asked: a node without vBoost never gets the feature
        done.append(set_vboost(ctx.root, int(want.vboost)))
    return ", ".join(done)
