"""`strata up|down|status|plan|apply|env`: the IaC layer's commands (mounted by strata/cli.py)."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from rich.text import Text

from iac import lab_cli, nodes_cli
from iac.cli_common import console, err, handle_errors, ops_for, site_option
from vocab.layout import Layout, state_root
from vocab.site import load_site
from vocab.names import FREE, FREE_POOL_NAME, owner_name

def _report(outcomes) -> None:
    if not outcomes:
        console.print("nothing to do: every node is where the site file puts it")
        return
    bad = [o for o in outcomes if not o.ok]
    for o in outcomes:
        colour = "green" if o.ok else "red"
        # the detail quotes Slurm and job text verbatim: only the result word is styled
        line = Text(f"{o.result:8}", style=colour)
        line.append(f" {o.node}: {owner_name(o.source)} -> {owner_name(o.target)}"
                    + (f"  ({o.report})" if o.report else ""))
        console.print(line, highlight=False, soft_wrap=True)
    if bad:
        err.print(f"[red]{len(bad)} node(s) not moved[/]; see above")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Mount the IaC commands on the root app."""
    nodes_cli.register(app)
    lab_cli.register(app)

    @app.command()
    @handle_errors
    def up(site: str = site_option()):
        """Start the site's daemons; on a fresh state dir also admit every node to its vCluster."""
        ops = ops_for(site)
        _report(ops.up())
        plan = ops.plan()
        if plan.moves:
            console.print(f"[yellow]the site file differs from the running site:[/] {'; '.join(plan.summary())}; "
                          "run `strata apply`", highlight=False)

    @app.command()
    @handle_errors
    def down(site: str = site_option(), purge: bool = typer.Option(False, help="Also delete the site's state dir.")):
        """Stop every daemon of the site (by pid); keep its state unless --purge."""
        ops = ops_for(site)
        ops.down(purge=purge)
        console.print(f"site {ops.site.name} is down" + (f"; deleted {ops.layout.root}" if purge else ""))

    @app.command()
    @handle_errors
    def plan(site: str = site_option(), as_json: bool = typer.Option(False, "--json", help="Machine-readable.")):
        """List the node moves that `strata apply` would make."""
        p = ops_for(site).plan()
        if as_json:
            print(json.dumps(p.to_json(), indent=2))
            return
        if p.empty and not p.problems:
            console.print("no changes: every node is where the site file puts it")
        lines = [f"move    {m.describe()}" for m in p.moves]
        lines += [f"finish  {n}: resume after an interrupted move" for n in p.finish]
        if lines:  # one print: rich per line costs a second at Alps scale
            console.print("\n".join(lines), highlight=False, markup=False)
        for pr in p.problems:
            err.print(f"[red]problem[/] {pr}", highlight=False)
        if p.problems:
            raise typer.Exit(1)

    @app.command()
    @handle_errors
    def apply(
        site: str = site_option(),
        timeout: float = typer.Option(600, help="Seconds to wait for a node's jobs to end."),
        force: bool = typer.Option(False, help="Requeue jobs instead of waiting; also move nodes drained by others."),
    ):
        """Move nodes between vClusters until the running site matches the site file."""
        _report(ops_for(site).apply(timeout=timeout, force=force))

    @app.command()
    @handle_errors
    def status(site: str = site_option(), as_json: bool = typer.Option(False, "--json", help="Machine-readable.")):
        """Platforms, vClusters and nodes with their Slurm state."""
        st = ops_for(site).status()
        if as_json:
            print(json.dumps(st, indent=2))
            return
        t = Table(title=f"site {st['site']}  ({st['state_dir']})")
        for col in ("platform", "vCluster", "controller", "node", "slurm state", "reason", "slurmd"):
            t.add_column(col)
        for p in st["platforms"]:
            for v in p["vclusters"]:
                ctl = f"{v['controller']} :{v['port']}"
                if not v["nodes"]:
                    t.add_row(p["platform"], v["vcluster"], ctl, "-", "", "", "")
                for i, n in enumerate(v["nodes"]):
                    note = f" -> {n['moving_to']}" if n["moving_to"] else ""
                    t.add_row(p["platform"] if i == 0 else "", v["vcluster"] if i == 0 else "", ctl if i == 0 else "",
                              n["node"], n["state"] + note, n["reason"], n["slurmd"])
        for i, n in enumerate(st["free_pool"]):
            note = f"moving -> {n['moving_to']}" if n["moving_to"] else FREE
            t.add_row("" if i else f"({FREE_POOL_NAME})", "", "", n["node"], note, "", "stopped")
        console.print(t)

    @app.command()
    @handle_errors
    def env(vcluster: str = typer.Argument(..., help="vCluster whose Slurm plain sinfo/sbatch/srun should use."),
            site: str = site_option()):
        """Print `export SLURM_CONF=…` so that plain sinfo/sbatch/srun talk to VCLUSTER."""
        from services.slurm.access import refusal

        s = load_site(site)
        if vcluster not in s.vclusters:
            err.print(f"[red]error:[/] no vCluster {vcluster!r} in {site}; known: {', '.join(s.vclusters)}")
            raise typer.Exit(2)
        if why := refusal(s, vcluster):  # its munge socket would refuse them later, less clearly
            err.print(f"error: {why}", highlight=False, markup=False)
            raise typer.Exit(2)
        print(f"export SLURM_CONF={Layout.of(s, state_root()).slurm_conf(vcluster)}")
