"""`strata lab up|down|status|reboot|rekey`: the lab of a driver: ssh site, real hosts on this machine
(iac/drivers/lab.py). Mounted by iac/cli.py.

`strata lab reboot NODE IMAGE` is what a lab site's `reboot.command` names: the site and state come from
--site / STRATA_SITE and STRATA_STATE, and it returns once the node's sshd answers again.
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path

import typer
from rich.markup import escape

from iac.cli_common import console, err, handle_errors, site_option
from iac.drivers import lab
from iac.drivers.lab_spec import LabError, spec_from_site
from vocab.layout import Layout, state_root
from vocab.site import load_site


def _lab_errors(fn):
    """A lab that cannot be made or used: one line, exit 1 (bad site input stays handle_errors' exit 2)."""
    @wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except LabError as e:
            err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1)
    return wrapper


def _root(site_path: str) -> Path:
    return Layout.of(load_site(site_path), state_root()).root / "lab"


def register(app: typer.Typer) -> None:
    """Mount `strata lab` on the root app."""
    lab_app = typer.Typer(help="The lab: a driver: ssh site's nodes and controllers as real hosts on this machine.",
                          no_args_is_help=True)

    @lab_app.command("up")
    @handle_errors
    @_lab_errors
    def up(site: str = site_option(),
           timeout: float = typer.Option(60, help="Seconds to wait for every host's sshd.")):
        """Make the lab: a host per node and controller, each answering SSH; write the key pair and known_hosts.

        Idempotent: running hosts are left alone, missing ones made, a crashed `up` is finished."""
        s = load_site(site)
        lab.up(spec_from_site(s, state_root()), timeout=timeout, say=lambda m: console.print(m, highlight=False))

    @lab_app.command("down")
    @handle_errors
    @_lab_errors
    def down(site: str = site_option()):
        """Remove every host, namespace and interface the lab recorded (keys and images are kept)."""
        gone = lab.down(_root(site))
        console.print(f"lab down: removed {len(gone)} host(s)" if gone else "no lab recorded: nothing to do",
                      highlight=False)

    @lab_app.command("status")
    @handle_errors
    @_lab_errors
    def status(site: str = site_option(), as_json: bool = typer.Option(False, "--json", help="Machine-readable.")):
        """Each host: address, running, booted image, sshd answering."""
        st = lab.status(_root(site))
        if st is None:
            if as_json:
                print("null")
            err.print("no lab recorded: run strata lab up", highlight=False)
            raise typer.Exit(1)
        if as_json:
            print(json.dumps(st, indent=1))
            return
        print(f"lab {st['site']}: bridge {st['bridge']} {st['bridge_address']} ({st['subnet']})"
              + ("" if st["bridge_up"] else "  (bridge MISSING: run strata lab up)"))
        # plain aligned columns, never cut: names and addresses are what an engineer copies
        rows = [("HOST", "ADDRESS", "RUNNING", "PID", "IMAGE", "SSHD", "NETNS", "VETH")] + [
            (h["host"], h["address"], "yes" if h["running"] else "no", str(h["pid"] or "-"), h["image"] or "-",
             "answers" if h["sshd"] else "silent", h["netns"], h["veth"]) for h in st["hosts"]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if not all(h["running"] and h["sshd"] for h in st["hosts"]):
            raise typer.Exit(1)

    @lab_app.command("reboot")
    @handle_errors
    @_lab_errors
    def reboot(node: str = typer.Argument(..., help="Lab host to reboot."),
               image: str = typer.Argument(..., help="Image to boot: <state>/<site>/lab/images/IMAGE/ (missing: empty)."),
               site: str = site_option(),
               timeout: float = typer.Option(60, help="Seconds to wait for its sshd after boot.")):
        """End every process of NODE, reset its writable layer from IMAGE, boot it; return once sshd answers."""
        lab.reboot(_root(site), node, image, timeout=timeout)
        console.print(f"{node} rebooted into {image}", highlight=False)

    @lab_app.command("rekey")
    @handle_errors
    @_lab_errors
    def rekey(node: str = typer.Argument(..., help="Lab host to give a new SSH host key."),
              site: str = site_option()):
        """Give NODE a new SSH host key and reboot it, as a reinstalled machine.

        known_hosts keeps the old key: ssh refuses NODE until `strata lab up` writes the new one."""
        lab.rekey(_root(site), node)
        console.print(f"{node} has a new host key; ssh refuses it until `strata lab up`", highlight=False)

    app.add_typer(lab_app, name="lab")
