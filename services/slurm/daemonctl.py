"""`python -m services.slurm.daemonctl slurmd start|stop …`: what the slurm_node role runs on a node.

Prints `changed` or `ok` so the role can report changes truthfully; exits 1 with a message on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.slurm.daemons import DaemonError, Slurmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="daemonctl")
    ap.add_argument("daemon", choices=["slurmd"])
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("--conf", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    d = Slurmd(Path(a.conf), a.node, Path(a.pidfile), Path(a.log), a.port)
    try:
        changed = d.start() if a.action == "start" else d.stop()
    except DaemonError as e:
        print(e, file=sys.stderr)
        return 1
    print("changed" if changed else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
