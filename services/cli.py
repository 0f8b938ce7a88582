"""`strata nodes`, `strata nodes resume`, `strata vet`: the service layer's commands (mounted by strata/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from iac.cli import console, err, handle_errors, ops_for, site_option
from iac.site import expand_nodes


def _checks(node_dir) -> dict:
    try:
        return json.loads((node_dir / "checks.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _summary(checks: dict) -> str:
    """One line of the node's last prolog/epilog results: `prolog ok (job 12, 85 ms)` or the failed part."""
    out = []
    for kind in ("prolog", "epilog"):
        c = checks.get(kind)
        if not c:
            continue
        bad = [f"{p['name']}: {p['detail']}" for p in c["parts"] if not p["ok"]]
        out.append(f"{kind} " + ("; ".join(bad) if bad else f"ok (job {c['job']}, {c['ms']:.0f} ms)"))
    return " | ".join(out)


def node_rows(ops) -> list[dict]:
    """Every site node: vCluster, Slurm state and reason, and the last check results the prolog recorded."""
    rows = []
    st = ops.status()
    for plat in st["platforms"]:
        for vc in plat["vclusters"]:
            for n in vc["nodes"]:
                rows.append({"node": n["node"], "vcluster": vc["vcluster"], "state": n["state"], "reason": n["reason"]})
    rows += [{"node": n["node"], "vcluster": None, "state": "free", "reason": ""} for n in st["free_pool"]]
    for r in rows:
        r["checks"] = _checks(ops.layout.node_dir(r["node"]))
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
            (r["node"], r["vcluster"] or "(free pool)", r["state"], r["reason"] or "-", _summary(r["checks"]) or "-")
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
            elif st.reason.startswith("strata: moving to"):
                refused.append(f"{n}: being moved ({st.reason}); run `strata apply` to finish the move")
            else:
                plane.slurm.resume([n])
                console.print(f"{n}: resumed in {vc} (was: {st.reason})", highlight=False)
        for line in refused:
            err.print(f"[red]refused:[/] {line}", highlight=False)
        if refused:
            raise typer.Exit(1)

    app.add_typer(nodes_app, name="nodes")

    @app.command()
    def vet(profile: str = typer.Option("llm", "--profile", help="Bundled profile name or a YAML path.")):
        """Vet the nodes of this allocation (`srun --ntasks-per-node=1 strata vet`); exit 1 names failing nodes."""
        from services.vetting.profile import ProfileError, load_profile
        from services.vetting.vet import vet as run_vet

        try:
            prof = load_profile(profile)
        except ProfileError as e:
            err.print(f"[red]error:[/] {e}", highlight=False)
            raise typer.Exit(2)
        ok, text = run_vet(prof)
        if text:
            print(text, flush=True)
        if not ok:
            raise typer.Exit(1)

    register_score(app)


def register_score(app: typer.Typer) -> None:
    """Mount `strata score -- CMD` (kept apart from register() only for reading; register() calls it)."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def score(ctx: typer.Context,
              metrics: str = typer.Option("", "--metrics", envvar="STRATA_METRICS",
                                          help="Trainer metrics JSONL to read tokens/s and MFU from."),
              interval: float = typer.Option(0.5, "--interval", help="Seconds between samples."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
        """Run `-- CMD`, sample CPU/GPU/memory, print a score against the node's upper bounds; exits with CMD's code."""
        from services.vetting.score import render, run_scored, to_json

        command = list(ctx.args)
        if not command:
            err.print("[red]error:[/] give the command after `--`, e.g. strata score -- python train.py")
            raise typer.Exit(2)
        s = run_scored(command, Path(metrics) if metrics else None, interval)
        print(to_json(s) if as_json else render(s), flush=True)
        raise typer.Exit(s.exit_code)
