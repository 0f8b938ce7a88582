"""`strata nodes` and `strata nodes resume`: node states across the site's vClusters, with the last results
of the prolog/epilog parts (services/prolog) on each node. Mounted by iac/cli.py."""

from __future__ import annotations

import json

import typer

from iac.cli_common import console, err, handle_errors, ops_for, site_option
from iac.moves import MOVING
from vocab.site import expand_nodes
from services.prolog.runner import load_checks, summarize
from vocab.names import FREE, FREE_POOL_NAME


def node_rows(ops) -> list[dict]:
    """Every site node: vCluster, Slurm state and reason, and the last check results the prolog recorded."""
    rows = []
    st = ops.status()
    for plat in st["platforms"]:
        for vc in plat["vclusters"]:
            for n in vc["nodes"]:
                rows.append({"node": n["node"], "vcluster": vc["vcluster"], "state": n["state"], "reason": n["reason"]})
    rows += [{"node": n["node"], "vcluster": None, "state": FREE, "reason": ""} for n in st["free_pool"]]
    for r in rows:
        r["checks"] = load_checks(ops.layout.node_dir(r["node"]))
    return sorted(rows, key=lambda r: r["node"])


def register(app: typer.Typer) -> None:
    """Mount `strata nodes` on the root app."""
    nodes_app = typer.Typer(help="Node states and our checks; resume nodes that we drained.", no_args_is_help=False)

    @nodes_app.callback(invoke_without_command=True)
    @handle_errors
    def nodes(ctx: typer.Context, site: str = site_option(),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
        """List every node with its vCluster, Slurm state, drain reason and last prolog/epilog checks."""
        if ctx.invoked_subcommand:
            return
        rows = node_rows(ops_for(site))
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        # plain aligned columns, never cut: reasons and check figures are what an engineer greps for
        table = [("NODE", "VCLUSTER", "STATE", "REASON", "LAST CHECKS")] + [
            (r["node"], r["vcluster"] or f"({FREE_POOL_NAME})", r["state"], r["reason"] or "-", summarize(r["checks"]) or "-")
            for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])

    @nodes_app.command("resume")
    @handle_errors
    def resume(names: str = typer.Argument(..., help="Nodes, hostlist syntax: nid003, nid[001-004]."),
               site: str = site_option()):
        """Resume drained nodes, only where the drain is ours (`strata:`); an admin's drain is never cleared."""
        ops = ops_for(site)
        owners = ops.observe()
        refused = []
        for n in expand_nodes(names):
            vc = owners.get(n)
            if n not in owners:
                refused.append(f"{n}: not a node of site {ops.site.name}")
                continue
            if vc is None:
                refused.append(f"{n}: in the free pool, not in any vCluster")
                continue
            plane = ops.planes[vc]
            st = plane.slurm.node(n)
            if st is None or not st.drain:
                console.print(f"{n}: not drained ({st.short if st else 'unknown'}); nothing to do", highlight=False)
            elif not st.ours:
                refused.append(f"{n}: drained by someone else, not ours (reason '{st.reason}'); "
                               f"resume it with scontrol if that is intended")
            elif st.reason.startswith(MOVING):
                refused.append(f"{n}: being moved ({st.reason}); run `strata apply` to finish the move")
            else:
                plane.slurm.resume([n])
                console.print(f"{n}: resumed in {vc} (was: {st.reason})", highlight=False)
        for line in refused:
            err.print(f"[red]refused:[/] {line}", highlight=False)
        if refused:
            raise typer.Exit(1)

    app.add_typer(nodes_app, name="nodes")
