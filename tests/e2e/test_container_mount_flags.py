"""CSCS-shaped mounts in real runc containers: a bare-path mount, `./` paths from the caller's working
directory (image, workdir, mounts), and bind flags forwarded to the kernel (read back from the container's
/proc/self/mountinfo), rootful and rootless. No Slurm: the engine's own entry point, as the SPANK plugin runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from user_envs.engine import ALWAYS_DENIED, EngineConfig
from user_envs.images import build_image

pytestmark = pytest.mark.e2e

USER_1000 = ("unshare", "--user", "--map-user=1000", "--map-group=1000")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    tmp = tmp_path_factory.mktemp("mountflags")
    work = tmp / "work"  # the caller's working directory: the image and the mounts are written from it
    for d in (work / "data", tmp / "shared", tmp / "ro", tmp / "hooks.d"):
        d.mkdir(parents=True)
    for d in (tmp, work, work / "data", tmp / "shared"):  # the rootless caller (uid 1000) writes there
        d.chmod(0o777)
    build_image("busybox", work / "busybox.sqsh")
    (work / "app.toml").write_text(
        'image = "./busybox.sqsh"\nworkdir = "./data"\n'
        f'mounts = ["./data", "{tmp}/shared", "{tmp}/ro:/ro:ro+nosuid+nodev+noexec", "{tmp}/ro:/rr:rro+rslave", '
        '"./busybox.sqsh:/opt/bb:sqsh+nodev"]\n')
    cfg = EngineConfig(vcluster="alpha", mount_allowlist=(str(tmp),), denied=(*ALWAYS_DENIED, str(tmp / "state")),
                       hooks_dir=tmp / "hooks.d", cache=tmp / "images", runs=tmp / "runs", runc_root=tmp / "runc")
    (tmp / "engine.json").write_text(cfg.to_json())
    return tmp


def run(site: Path, script: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(site), "STRATA_USER_DIR": str(site / "user1000")}
    return subprocess.run([*prefix, sys.executable, "-m", "user_envs.run", "--config", str(site / "engine.json"),
                           "--environment=./app.toml", "--", "sh", "-c", script],
                          cwd=site / "work", env=env, capture_output=True, text=True, timeout=120)


def mount_options(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> its per-mount options (field 6 of /proc/self/mountinfo)."""
    return {f[4]: set(f[5].split(",")) for f in (line.split() for line in mountinfo.splitlines())}


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_bare_and_relative_mounts_and_forwarded_flags_reach_the_kernel(site, rootless):
    if rootless and subprocess.run([*USER_1000, "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare --user` fails here: cannot run as a user who is not root")
    work = site / "work"
    r = run(site, f"pwd; touch {work}/data/made {site}/shared/made; touch /ro/x 2>/dev/null || echo ro; "
                  "touch /rr/x 2>/dev/null || echo rro; test -x /opt/bb/bin/busybox && echo sqsh; echo ---; "
                  "cat /proc/self/mountinfo",
            prefix=USER_1000 if rootless else ())
    assert r.returncode == 0, r.stderr
    head, _, mountinfo = r.stdout.partition("---\n")
    assert head == f"{work}/data\nro\nrro\nsqsh\n"  # workdir ./data from the caller's cwd; ro binds refuse writes
    assert (work / "data" / "made").exists() and (site / "shared" / "made").exists()  # bare paths: same path
    opts = mount_options(mountinfo)
    assert {"ro", "nosuid", "nodev", "noexec"} <= opts["/ro"]
    assert {"ro", "nodev"} <= opts["/opt/bb"] and "ro" in opts["/rr"]  # sqsh: read-only, nodev forwarded
    assert "rw" in opts[f"{work}/data"] and "rw" in opts[f"{site}/shared"]
