"""Images built here: a tiny busybox image, and a base for running the trainer with the project's venv.

Both are SquashFS files made with `mksquashfs` from busybox-static (Debian's `busybox-static`):
  busybox       busybox and its applets, an enroot-style `/etc/rc` entrypoint (`exec "$@"`)
  trainer-base  the same plus where glibc's loader is expected; the host's glibc dir, the Python the venv
                was made from, the venv (at /user-environment, where CSCS mounts user environments) and the
                repo are mounted by the EDF that `trainer_edf` writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

APPLETS = ("sh", "ls", "cat", "echo", "id", "env", "pwd", "grep", "touch", "test", "find", "stat", "readlink",
           "true", "false", "sleep", "mkdir", "rm", "uname", "hostname", "ps")
GLIBC_DIR = "/usr/lib/x86_64-linux-gnu" if os.uname().machine == "x86_64" else "/usr/lib/aarch64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2" if os.uname().machine == "x86_64" else "ld-linux-aarch64.so.1"
REPO = Path(__file__).resolve().parents[1]


class ImageError(Exception):
    """An image cannot be built: says what to install."""


def build_image(kind: str, out: Path) -> Path:
    """Build image `kind` ("busybox" or "trainer-base") as a SquashFS file at `out`."""
    if kind not in ("busybox", "trainer-base"):
        raise ImageError(f"unknown image {kind!r}; build busybox or trainer-base")
    busybox = shutil.which("busybox")
    if not busybox or not shutil.which("mksquashfs"):
        raise ImageError("busybox and mksquashfs are needed: apt-get install busybox-static squashfs-tools")
    with tempfile.TemporaryDirectory(prefix="strata-image-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "etc", "tmp", "lib64", GLIBC_DIR.lstrip("/")):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, root / "bin" / "busybox")
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        (root / "etc" / "rc").write_text('#!/bin/sh\necho "entrypoint ran"\nexec "$@"\n')
        (root / "etc" / "rc").chmod(0o755)
        (root / "tmp").chmod(0o1777)
        if kind == "trainer-base":
            (root / "lib").symlink_to("usr/lib")
            (root / "lib64" / LOADER).symlink_to(f"{GLIBC_DIR}/{LOADER}")
        out.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mksquashfs", str(root), str(out), "-quiet", "-noappend", "-all-root", "-no-progress"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise ImageError(f"mksquashfs failed: {r.stderr.strip()}")
    return out


def trainer_edf(image: Path, runs: Path, repo: Path = REPO, python: str = sys.executable) -> str:
    """An EDF that runs the bundled trainer from this repo's venv in `image` (a trainer-base image)."""
    pyroot = Path(os.path.realpath(python)).parents[1]  # the Python the venv was made from
    venv = Path(python).parents[1]
    return f'''# The bundled trainer in a container: base image + the project's environment mounted (strata engine trainer-edf)
image = "{image}"
workdir = "{repo}"
mounts = [
  "{GLIBC_DIR}:{GLIBC_DIR}:ro",         # the base has no glibc: the host's (same distribution)
  "{pyroot}:{pyroot}:ro",               # the Python the venv points at
  "{venv}:/user-environment:ro",        # the user environment, where CSCS mounts uenvs
  "{repo}:{repo}:ro",                   # the code (the venv's editable install points here)
  "{runs}:/runs",                       # run dirs: --job.run_dir=/runs/NAME
]

[env]
PATH = "/user-environment/bin:/bin"
MASTER_ADDR = "127.0.0.1"               # the local site's nodes all live on this host (a real site: drop it)
GLOO_SOCKET_IFNAME = "lo"
'''


def trainer_mounts(runs: Path, repo: Path = REPO, python: str = sys.executable) -> list[str]:
    """Host paths the trainer EDF mounts: what a vCluster's mount_allowlist must hold for it."""
    return [GLIBC_DIR, str(Path(os.path.realpath(python)).parents[1]), str(Path(python).parents[1]), str(repo),
            str(runs)]
