"""One spelling for each shared idea: the free pool, our drain reasons, the munge socket, THP modes."""

from __future__ import annotations

FREE_POOL = None  # the owner of a node that belongs to no vCluster, in code
FREE = "free"  # the free pool where a string must stand for it: the journal, the boot record, its image
FREE_POOL_NAME = "free pool"  # the free pool in what people read

OUR_PREFIX = "strata:"  # every drain reason we set starts with this; we never clear anyone else's
MOVING = f"{OUR_PREFIX} moving to "  # the drain reason of a node on its way out (or in) of a vCluster

MUNGE_SOCKET = "munge.sock"  # a vCluster's munged socket, in its munge dir

THP_MODES = ("always", "madvise", "never")  # /sys/kernel/mm/transparent_hugepage/enabled


def owner_key(vcluster: str | None) -> str:
    """A node's owner as a string (`free` for the free pool)."""
    return vcluster or FREE


def owner_name(vcluster: str | None) -> str:
    """A node's owner for people (`free pool`)."""
    return vcluster or FREE_POOL_NAME


def move_reason(target: str | None) -> str:
    """Our drain reason while a node moves to `target`."""
    return MOVING + owner_name(target)
