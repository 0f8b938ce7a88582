"""Write the node tuning files into a node root (run by the node_tuning role; one process for all files).

`render(settings)` is pure: path (relative to the node root) -> text, or None for a file that must not exist.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HEADER = "# Managed by strata (node_tuning role): do not edit, changes are overwritten.\n"
THP_MODES = ("always", "madvise", "never")  # this file ships alone to nodes: vocab.names.THP_MODES, pinned by a test
PERSISTENCED = "etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"


def render(s: dict) -> dict[str, str | None]:
    """The managed files for settings `s` (the role's defaults, validated here)."""
    if s["thp_default"] not in THP_MODES:
        raise ValueError(f"node_tuning_thp_default must be one of {', '.join(THP_MODES)}, not {s['thp_default']!r}")
    numa = str(s["cpu_numa_nodes"])
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", numa):
        raise ValueError(f"node_tuning_cpu_numa_nodes must be a NUMA node list like 0-3, not {numa!r}")
    files: dict[str, str | None] = {
        "etc/modprobe.d/strata-nvidia-uvm.conf": None if s["access_counter_migration"] else
            HEADER + "# No access-counter-guided page migration between HBM and LPDDR.\n"
            "options nvidia_uvm uvm_perf_access_counter_migration_enable=0\n",
        "etc/systemd/system.conf.d/strata-numa.conf":
            HEADER + "# System services allocate from CPU memory only, never from GPU HBM.\n"
            f"[Manager]\nNUMAPolicy=bind\nNUMAMask={numa}\n",
        "etc/systemd/system/tmp.mount.d/strata-numa.conf":
            HEADER + f"[Mount]\nOptions=mode=1777,strictatime,nosuid,nodev,mpol=bind:{numa}\n",
        "etc/systemd/system/dev-shm.mount.d/strata-numa.conf":
            HEADER + f"[Mount]\nOptions=mode=1777,nosuid,nodev,mpol=bind:{numa}\n",
        "etc/strata/tuning.json": json.dumps(
            {"thp": s["thp_default"], "vboost": bool(s["vboost_default"]), "gpu_persistence": bool(s["gpu_persistence"]),
             "cpu_numa_nodes": numa, "access_counter_migration": bool(s["access_counter_migration"])},
            indent=1, sort_keys=True) + "\n",
        PERSISTENCED: "/lib/systemd/system/nvidia-persistenced.service" if s["gpu_persistence"] else None,
    }
    return files


def apply(root: Path, files: dict[str, str | None]) -> bool:
    """Make the node root hold exactly these files; True if anything changed. The persistence entry is a symlink."""
    changed = False
    for rel, text in files.items():
        path = root / rel
        if text is None:
            if path.is_symlink() or path.exists():
                path.unlink()
                changed = True
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == PERSISTENCED:
            if not path.is_symlink() or str(path.readlink()) != text:
                path.unlink(missing_ok=True)
                path.symlink_to(text)
                changed = True
        elif not path.exists() or path.read_text() != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
            changed = True
    return changed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="node_tuning")
    ap.add_argument("--root", required=True)
    ap.add_argument("--settings", required=True, help="JSON of the role's settings.")
    a = ap.parse_args(argv)
    try:
        files = render(json.loads(a.settings))
    except (ValueError, KeyError) as e:
        print(f"node_tuning: {e}", file=sys.stderr)
        return 2
    print("changed" if apply(Path(a.root), files) else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
