"""Prolog/epilog as numbered drop-in parts (DeepOps style): every part runs, each is logged, one failure fails all.

`python -m services.prolog run prolog|epilog` is what Slurm's Prolog=/Epilog= wrappers exec. Parts read and
write through the node root (`STRATA_NODE_ROOT`: `/` on a real node, the emulated root on the local site).
"""
