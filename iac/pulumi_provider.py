"""The dynamic provider behind `NodeMembership`: Pulumi's create/update/delete become node moves.

Pulumi runs a dynamic provider in another process from a pickled copy of this object, so the provider
holds no state and every input is plain data (paths as strings, numbers, booleans). Heavy modules (the
site model, the move code, Slurm clients) are imported inside the methods. A move runs through
`SiteOps.apply(desired={node: vcluster})`: the same code, journal and file lock as `strata apply`, so the
two can be used in turn, and parallel Pulumi steps take turns on the site's lock.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from vocab.names import FREE, owner_key, owner_name


# Inputs a NodeMembership is made of. A change of `vcluster` is a move (an update); a change of the node,
# the site or its state dir names a different real thing, so it replaces the membership.
INPUTS = ("node", "vcluster", "site", "site_path", "state_dir", "timeout", "force")
REPLACED_BY = ("node", "site", "state_dir")

_MARKUP = re.compile(r"\[/?[a-z ]*\]")  # rich markup in SiteOps messages ([red]held[/]); hostlists have digits


class MoveError(Exception):
    """A node did not reach its vCluster; the next `pulumi up` retries (every move step is idempotent)."""


def membership_diff(olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
    """Which inputs changed and which of those replace the membership (pure; `diff` delegates here)."""
    changed = [k for k in INPUTS if k in news and olds.get(k) != news.get(k)]
    replaces = [k for k in changed if k in REPLACED_BY]
    # a replaced membership must first give its node back (delete), then take it again (create):
    # the default create-before-delete would move the node in and then straight out to the free pool
    return DiffResult(changes=bool(changed), replaces=replaces, stables=[], delete_before_replace=True)


class NodeMembershipProvider(ResourceProvider):
    """Create, update and delete a node's membership in a vCluster by moving the node."""

    serialize_as_secret_always = False  # holds nothing secret: only the class is pickled

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Reject a membership naming a node or vCluster that its site file does not define."""
        from vocab.site import SiteError, load_site

        try:
            site = load_site(news["site_path"])
        except SiteError as e:
            return CheckResult(news, [CheckFailure("site_path", str(e))])
        failures = []
        if news.get("node") not in site.nodes:
            failures.append(CheckFailure("node", f"{news.get('node')!r} is not a node of {site.path}"))
        vc = news.get("vcluster") or FREE
        if vc != FREE and vc not in site.vclusters:
            known = ", ".join(site.vclusters) or "none"
            failures.append(CheckFailure("vcluster", f"{vc!r} is not a vCluster of {site.path} (known: {known})"))
        if not float(news.get("timeout") or 0) > 0:
            failures.append(CheckFailure("timeout", "the move timeout must be a positive number of seconds"))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        """Move the node into its vCluster (or the free pool); nothing to do if it is there already."""
        return CreateResult(_id(props), _move(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """A new `vcluster` is an update (a move), never a replacement."""
        return membership_diff(olds, news)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Move the node to its new vCluster."""
        return UpdateResult(_move(news))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Give the node back to the free pool (a site never set up has nothing to give back)."""
        ops = _ops(props, [])
        if ops.fresh() or ops.observe().get(props["node"]) is None:
            return
        _move({**props, "vcluster": FREE})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The node's observed vCluster (`pulumi refresh`); starts no daemon."""
        ops = _ops(props, [])
        owner = ops.observe().get(props["node"])
        return ReadResult(id_, {**props, "vcluster": owner or FREE, "slurm_state": _slurm_state(ops, props["node"], owner)})


# ---- helpers (module level: the pickled provider carries no state) ----------------------------------

def _id(props: dict[str, Any]) -> str:
    return f"{props['site']}/{props['node']}"


def _ops(props: dict[str, Any], log: list[str]):
    from pathlib import Path

    from iac.ops import SiteOps
    from vocab.site import load_site

    def say(msg: str) -> None:
        line = _MARKUP.sub("", msg)
        log.append(line)
        print(line, file=sys.stderr)  # the engine keeps a provider's stderr in its log (pulumi -v)

    return SiteOps(load_site(props["site_path"]), Path(props["state_dir"]), say=say)


def _move(props: dict[str, Any]) -> dict[str, Any]:
    """Move props['node'] to props['vcluster'] and return the membership's outputs; raise MoveError."""
    node, target = props["node"], props.get("vcluster") or FREE
    log: list[str] = []
    ops = _ops(props, log)
    outcomes = ops.apply(desired={node: None if target == FREE else target}, timeout=float(props["timeout"]), force=bool(props["force"]))
    for o in outcomes:
        if o.node == node and not o.ok:
            raise MoveError(
                f"{node}: {o.result} moving {owner_name(o.source)} -> {owner_name(o.target)}: {o.report}\n"
                + "\n".join(log)
                + "\nfix the cause and run `pulumi up` again: the move resumes where it stopped"
            )
    owner = ops.observe().get(node)
    if owner_key(owner) != target:  # apply reported no failure, so this is a bug in the move code
        raise MoveError(f"{node}: asked for {target} but it is in {owner_name(owner)}\n" + "\n".join(log))
    return {**props, "vcluster": target, "slurm_state": _slurm_state(ops, node, owner)}


def _slurm_state(ops, node: str, owner: str | None) -> str:
    """sinfo-like state of the node in its vCluster: idle, alloc, drained, …; `free` in the free pool."""
    from services.slurm.control import SlurmError

    if owner is None:
        return FREE
    plane = ops.planes.get(owner)
    if plane is None or not plane.running():
        return "controller down"
    try:
        st = plane.slurm.node(node)
    except SlurmError:
        return "unknown"
    return st.short if st else "unknown"
