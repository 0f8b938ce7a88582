"""`python -m user_envs.run --config ENGINE_JSON --environment NAME -- CMD …`: the engine's lean entry point.

What the SPANK plugin execs in each task, and what `bench/bench_container.py` times: no CLI framework is
imported, so a container starts with as little Python as possible. Errors: message on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="user_envs.run")
    p.add_argument("--config", required=True, type=Path, help="The vCluster's engine.json.")
    p.add_argument("--environment", required=True, help="EDF name (searched in EDF_PATH, ~/.edf) or path.")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    from user_envs.edf import EdfError
    from user_envs.engine import EngineError, run_named

    try:
        return run_named(a.environment, cmd, a.config)
    except (EdfError, EngineError) as e:
        print(f"strata: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
