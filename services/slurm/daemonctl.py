"""`python -m services.slurm.daemonctl slurmd start|stop …`: what the slurm_node role runs on a node.

`start` makes the spool and log directories, records the vCluster the node serves in its root
(`etc/strata/vcluster`) and starts slurmd unless it runs; `stop` stops it by pid and forgets the vCluster.
Prints `changed` or `ok` so the role reports changes truthfully; exits 1 with a message on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.slurm.daemons import DaemonError, Slurmd
from vocab.files import write_atomic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="daemonctl")
    ap.add_argument("daemon", choices=["slurmd"])
    ap.add_argument("action", choices=["start", "stop"])
    ap.add_argument("--conf", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spool", required=True)
    ap.add_argument("--node-root", required=True)
    ap.add_argument("--vcluster", default="")
    a = ap.parse_args(argv)
    d = Slurmd(Path(a.conf), a.node, Path(a.pidfile), Path(a.log), a.port)
    identity = Path(a.node_root) / "etc/strata/vcluster"
    try:
        if a.action == "start":
            for p in (Path(a.spool), Path(a.log).parent):
                p.mkdir(parents=True, exist_ok=True)
            changed = write_atomic(identity, a.vcluster + "\n")
            changed = d.start() or changed
        else:
            changed = d.stop()
            if identity.exists():
                identity.unlink()
                changed = True
    except (DaemonError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    print("changed" if changed else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
