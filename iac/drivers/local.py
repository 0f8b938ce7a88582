"""The local driver: a node's `/` is a directory under the state dir; "rebooting into an image" resets it.

The root holds what the service layer reads and writes on a real node: THP and drop_caches files, GPU
device nodes (Slurm's gres.conf points at them) and the emulated GPU state. The reset builds the new root
beside the old one and swaps it in, writing the boot record last, so a crash leaves either root whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vocab.site import Node
from vocab.names import owner_key

BOOT_RECORD = "etc/strata/boot.json"


def booted_for(root: Path) -> str | None:
    """The vCluster (or 'free') the node root was last booted for; None if never booted."""
    try:
        return json.loads((root / BOOT_RECORD).read_text())["vcluster"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _mkdev(path: Path, minor: int) -> None:
    # Real character devices (major 195 = nvidia): slurmd refuses GRES files that are not devices.
    try:
        os.mknod(path, 0o666 | 0o020000, os.makedev(195, minor))
    except PermissionError:
        path.touch()  # still counted by slurmd, with a logged complaint


def reboot(node: Node, root: Path, vcluster: str | None, image: str) -> bool:
    """Reset the node root for `vcluster` booting `image`; False if already booted for it."""
    target = owner_key(vcluster)
    if booted_for(root) == target and (root / BOOT_RECORD).exists():
        return False
    new = root.with_name("root.new")
    shutil.rmtree(new, ignore_errors=True)
    hw = node.hardware
    thp = new / "sys/kernel/mm/transparent_hugepage"
    thp.mkdir(parents=True)
    (thp / "enabled").write_text("[always] madvise never\n")
    (thp / "defrag").write_text("always defer defer+madvise [madvise] never\n")
    vm = new / "proc/sys/vm"
    vm.mkdir(parents=True)
    (vm / "drop_caches").write_text("0\n")
    (new / "dev").mkdir()
    for i in range(hw.gpus.count):
        _mkdev(new / f"dev/nvidia{i}", i)
    gpus = [
        {"index": i, "model": hw.gpus.model, "memory_total_mib": int(hw.gpus.memory_gib * 1024),
         "memory_used_mib": 0, "vboost": 0}
        for i in range(hw.gpus.count)
    ]
    (new / "run/strata").mkdir(parents=True)
    (new / "run/strata/gpus.json").write_text(json.dumps(gpus, indent=1))
    (new / "etc/strata").mkdir(parents=True)
    (new / "etc/strata/hardware.json").write_text(json.dumps({"node": node.name, **hw.model_dump()}, indent=1))
    (new / "tmp").mkdir(mode=0o1777)
    boot = {"node": node.name, "vcluster": target, "image": image}
    (new / BOOT_RECORD).write_text(json.dumps(boot) + "\n")
    old = root.with_name("root.old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    new.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return True
