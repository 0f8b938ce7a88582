"""OCI hooks per vCluster in the containers-hooks JSON format (podman/CRI-O `hooks.d`, as Sarus uses them).

A definition says which program to run at which OCI stage and *when*:
`"when": {"annotations": {"^com\\.hooks\\.NAME\\.enabled$": "^true$"}}` or `"when": {"always": true}`.
Network-stack hooks (the role of `com.hooks.cxi` / `com.hooks.aws_ofi_nccl`) bind the host libraries the
vCluster lists into `/opt/strata/hooks/NAME/lib`; the GPU hook binds the node's `/dev/nvidia*` and NVIDIA
driver libraries when the node has them. Both run `hook_inject.py` at the `createContainer` stage: inside
the container's mount namespace, before `pivot_root`, so the host paths are still reachable.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


HOOK_PROGRAM = Path(__file__).resolve().parent / "hook_inject.py"
HOOK_LIB_DIR = "/opt/strata/hooks/{name}/lib"
GPU_HOOK = "gpu"
NODE_ROOT_ANNOTATION = "org.strata.node_root"  # set by the engine: where the node's /dev and /usr live


def hook_definition(name: str, libraries: tuple[str, ...], python: str = sys.executable) -> dict:
    """The hooks.d JSON of one network-stack hook: inject `libraries` when the EDF enables it."""
    return {
        "version": "1.0.0",
        "hook": {"path": python, "args": [python, "-I", "-S", str(HOOK_PROGRAM), "--name", name,
                                          "--dest", HOOK_LIB_DIR.format(name=name), *libraries]},
        "when": {"annotations": {f"^com\\.hooks\\.{re.escape(name)}\\.enabled$": "^true$"}},
        "stages": ["createContainer"],
    }


def gpu_hook_definition(python: str = sys.executable) -> dict:
    """The hooks.d JSON of the GPU hook: always on; it binds nothing on a node without /dev/nvidia*."""
    return {
        "version": "1.0.0",
        "hook": {"path": python, "args": [python, "-I", "-S", str(HOOK_PROGRAM), "--name", GPU_HOOK, "--gpu",
                                          "--dest", HOOK_LIB_DIR.format(name=GPU_HOOK)]},
        "when": {"always": True},
        "stages": ["createContainer"],
    }


def render_hooks(vc, python: str = sys.executable) -> dict[str, str]:
    """File name -> JSON text of every hook a vCluster (`vocab.site.VCluster`) offers (sorted keys: stable output)."""
    defs = {f"{name}.json": hook_definition(name, h.libraries, python) for name, h in vc.container_engine.hooks.items()}
    defs[f"{GPU_HOOK}.json"] = gpu_hook_definition(python)
    return {f: json.dumps(d, indent=2, sort_keys=True) + "\n" for f, d in sorted(defs.items())}


def load_hooks(hooks_dir: Path) -> dict[str, dict]:
    """Hook name (file stem) -> definition, from an installed hooks.d dir."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(hooks_dir.glob("*.json"))}


def matches(definition: dict, annotations: dict[str, str]) -> bool:
    """Whether a hook applies: `always`, or some annotation matches each key/value regex pair."""
    when = definition.get("when", {})
    if when.get("always"):
        return True
    pairs = when.get("annotations", {})
    return bool(pairs) and all(
        any(re.search(kre, k) and re.search(vre, v) for k, v in annotations.items()) for kre, vre in pairs.items()
    )


def requested_hooks(annotations: dict[str, str]) -> list[str]:
    """Hook names an EDF switches on: `com.hooks.NAME.enabled = "true"`."""
    out = []
    for k, v in annotations.items():
        m = re.fullmatch(r"com\.hooks\.([A-Za-z0-9_-]+)\.enabled", k)
        if m and v == "true":
            out.append(m.group(1))
    return sorted(out)


def oci_hooks(definitions: dict[str, dict], annotations: dict[str, str]) -> tuple[list[str], dict[str, list[dict]]]:
    """The names of the hooks that apply and config.json's `hooks` (stage -> entries)."""
    names, stages = [], {}
    for name, d in definitions.items():
        if matches(d, annotations):
            names.append(name)
            for stage in d["stages"]:
                stages.setdefault(stage, []).append({k: v for k, v in d["hook"].items() if k in ("path", "args", "env", "timeout")})
    return names, stages
