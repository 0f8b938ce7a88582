"""Install the container engine for a vCluster: engine.json, hooks.d, the SPANK plugin and plugstack.conf.

Files (all with our managed header where the format allows comments), under the vCluster's `etc/`:
  container-engine/engine.json     allowlist, denied paths, cache and run dirs (read by the engine)
  container-engine/hooks.d/*.json  OCI hook definitions (containers-hooks JSON)
  container-engine/strata_spank.so the SPANK plugin, compiled from user_envs/spank/ against libslurm-dev
  plugstack.conf                   next to slurm.conf: Slurm's default PlugStackConfig location
Called by the Ansible role `container_engine` (one module run), as `python -m user_envs.install`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from vocab.layout import Layout
from vocab.site import Site, load_site
from vocab.files import write_atomic
from user_envs.engine import ALWAYS_DENIED, EngineConfig
from user_envs.hooks import render_hooks

SPANK_SOURCE = Path(__file__).resolve().parent / "spank" / "strata_spank.c"
HEADER = "# managed by strata (user_envs/install.py): edits are overwritten\n"


class InstallError(Exception):
    """The engine cannot be installed (no compiler, no SPANK headers): says what to install."""


def engine_dir(layout: Layout, vcluster: str) -> Path:
    return layout.vcluster_dir(vcluster) / "etc" / "container-engine"


def engine_config(site: Site, layout: Layout, vcluster: str) -> EngineConfig:
    """The engine settings of one vCluster (pure)."""
    vc = site.vclusters[vcluster]
    base = layout.root / "container-engine"
    return EngineConfig(
        vcluster=vcluster,
        mount_allowlist=tuple(vc.container_engine.mount_allowlist),
        # the whole state dir: every vCluster's munge key and socket, slurm state, other users' runs
        denied=(*ALWAYS_DENIED, str(layout.root)),
        hooks_dir=engine_dir(layout, vcluster) / "hooks.d",
        cache=base / "images",
        runs=base / "runs",
        runc_root=base / "runc" / vcluster,
        nodes_dir=layout.nodes_dir if site.spec.driver == "local" else None,
        slurm_conf=layout.slurm_conf(vcluster),
    )


def render_plugstack(plugin: Path, config: Path, python: str) -> str:
    return HEADER + f"required {plugin} python={python} config={config}\n"


def engine_python(site: Site, vcluster: str) -> str:
    """The interpreter the SPANK plugin execs in each task: the site's choice, else the installing Python."""
    return site.vclusters[vcluster].container_engine.python or sys.executable


def closed_to_users(path: str) -> str | None:
    """Why a user who is not root and not in the owning groups cannot execute `path`; None when they can.

    Follows every symlink and checks each directory on the way for others' search bit (a venv's python is
    often a link into /root, which is 0700: root's srun works, every researcher's fails at exec).
    """
    def lacks_x(p: Path, what: str) -> str | None:  # stat follows links: p's own mode, or why none
        try:
            mode = p.stat().st_mode
        except OSError as e:
            return f"{p}: {e.strerror}"
        return None if mode & 0o001 else f"{p} is not {what} by other users (mode {mode & 0o777:o})"

    seen: set[str] = set()
    todo = [Path(path)]
    while todo:
        p = todo.pop()
        if str(p) in seen:
            continue
        seen.add(str(p))
        for d in reversed(p.parents):
            if why := lacks_x(d, "searchable"):
                return why
        if p.is_symlink():
            target = Path(os.readlink(p))
            todo.append(target if target.is_absolute() else p.parent / target)
        elif why := lacks_x(p, "executable"):
            return why
    return None


def build_plugin(out: Path) -> bool:
    """Compile the SPANK plugin when its source changed (a stamp holds the source's hash)."""
    src = SPANK_SOURCE.read_bytes()
    stamp = out.with_suffix(".sha256")
    digest = hashlib.sha256(src).hexdigest()
    if out.exists() and stamp.exists() and stamp.read_text() == digest:
        return False
    if not Path("/usr/include/slurm/spank.h").exists():
        raise InstallError("SPANK headers missing (/usr/include/slurm/spank.h): apt-get install libslurm-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".so.tmp")
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SPANK_SOURCE)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise InstallError(f"compiling {SPANK_SOURCE} failed (is gcc installed?):\n{r.stderr}")
    tmp.replace(out)  # a running slurmstepd keeps the old inode
    stamp.write_text(digest)
    return True


def install(site: Site, layout: Layout, vcluster: str) -> bool:
    """Write every engine file of `vcluster`; return True when something changed."""
    cfg = engine_config(site, layout, vcluster)
    edir = engine_dir(layout, vcluster)
    changed = write_atomic(edir / "engine.json", cfg.to_json())
    hooks = render_hooks(site.vclusters[vcluster], engine_python(site, vcluster))
    cfg.hooks_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in cfg.hooks_dir.glob("*.json")) - set(hooks):
        (cfg.hooks_dir / stale).unlink()
        changed = True
    for name, text in hooks.items():
        changed |= write_atomic(cfg.hooks_dir / name, text)
    for d in (cfg.cache, cfg.runs, cfg.runc_root):
        d.mkdir(parents=True, exist_ok=True)
    plugin = edir / "strata_spank.so"
    changed |= build_plugin(plugin)
    changed |= write_atomic(layout.vcluster_dir(vcluster) / "etc" / "plugstack.conf",
                            render_plugstack(plugin, edir / "engine.json", engine_python(site, vcluster)))
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="user_envs.install")
    p.add_argument("--site", required=True)
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("vcluster")
    a = p.parse_args(argv)
    site = load_site(a.site)
    try:
        changed = install(site, Layout.of(site, a.state), a.vcluster)
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("changed" if changed else "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
