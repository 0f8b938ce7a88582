"""Install the packaged parts into a node (`<root>/etc/strata/{prolog,epilog}.d`): what the `prolog` role runs.

Our parts are refreshed by content; parts a site dropped in beside them are left alone (a manifest lists
what we installed, so a part we no longer ship is removed and nobody else's is).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from services.prolog.runner import KINDS, PARTS, discover

MANIFEST = ".strata-managed"


def install(root: Path, packaged: Path = PARTS) -> bool:
    """Make the node's installed parts equal the packaged ones; True if anything changed."""
    changed = False
    for kind in KINDS:
        dest = root / "etc/strata" / f"{kind}.d"
        dest.mkdir(parents=True, exist_ok=True)
        ours = {p.name: p for p in discover(packaged / f"{kind}.d")}
        manifest = dest / MANIFEST
        before = set(manifest.read_text().split()) if manifest.exists() else set()
        for name in sorted(before - set(ours)):
            (dest / name).unlink(missing_ok=True)
            changed = True
        for name, src in ours.items():
            target = dest / name
            if not target.exists() or target.read_bytes() != src.read_bytes():
                shutil.copyfile(src, target)
                changed = True
            target.chmod(0o755)
        if before != set(ours):
            manifest.write_text("\n".join(sorted(ours)) + "\n")
    return changed


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.prolog install")
    ap.add_argument("--root", required=True, help="The node's / (the emulated root on the local site).")
    a = ap.parse_args(argv)
    print("changed" if install(Path(a.root)) else "ok")
    return 0
