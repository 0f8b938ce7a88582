"""Rootless containers: the OCI config for a caller who is not root, their own state dir, the refusals."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from user_envs import bundle, engine, userns
from user_envs.bundle import RemapTool, RunSpec, build_config
from user_envs.edf import Mount
from user_envs.engine import EngineConfig, EngineError
from user_envs.resolve import ResolvedEdf

REPO = Path(__file__).resolve().parents[2]
TOOL = RemapTool(unshare="/usr/bin/unshare", loader="/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")


def spec(**kw) -> RunSpec:
    base = dict(rootfs=Path("/r"), args=("python", "x.py"), env={"A": "1"}, cwd="/w", uid=1234, gid=99, readonly=False,
                mounts=(Mount("/scratch/a", "/data", ("ro",)),), rootless=TOOL)
    return RunSpec(**{**base, **kw})


def test_rootless_config_gives_the_container_a_user_namespace_and_runs_the_command_as_the_caller():
    c = build_config(spec())
    linux = c["linux"]
    assert linux["namespaces"] == [{"type": "mount"}, {"type": "user"}]  # still the host's network, PID, IPC
    # the caller is 0 in the namespace runc runs in; runc needs a root in the container's: 0 -> 0, one id
    assert linux["uidMappings"] == linux["gidMappings"] == [{"containerID": 0, "hostID": 0, "size": 1}]
    assert "resources" not in linux  # no device cgroup rules: runc cannot set them without root
    p = c["process"]
    # the process starts as that root and re-maps itself to the caller's uid/gid before it execs the command
    assert p["user"] == {"uid": 0, "gid": 0}
    assert p["args"] == ["/.strata/lib/ld-linux-x86-64.so.2", "--library-path", "/.strata/lib", "/.strata/unshare",
                         "--user", "--map-user=1234", "--map-group=99", "--", "python", "x.py"]
    # CAP_SETFCAP only, for that map write (it names the parent's uid 0); the command runs as 1234: none
    assert {k: v for k, v in p["capabilities"].items() if v} == {k: ["CAP_SETFCAP"] for k in ("bounding", "effective", "permitted")}
    assert p["noNewPrivileges"] is True and p["env"] == ["A=1"] and p["cwd"] == "/w"
    assert c["root"] == {"path": "/r", "readonly": False}
    assert "privileged" not in json.dumps(c)


def test_rootless_config_binds_proc_and_sys_and_the_remap_tool():
    mounts = {m["destination"]: m for m in build_config(spec())["mounts"]}
    assert not any(m["type"] in ("proc", "sysfs") for m in mounts.values())  # a new proc needs a PID namespace
    assert mounts["/proc"] == {"destination": "/proc", "type": "bind", "source": "/proc",
                               "options": ["rbind", "nosuid", "noexec", "nodev"]}
    assert mounts["/sys"]["type"] == "bind" and "ro" in mounts["/sys"]["options"] and "rbind" in mounts["/sys"]["options"]
    assert mounts["/dev"]["type"] == "tmpfs" and mounts["/dev/shm"]["type"] == "tmpfs"
    assert mounts["/data"] == {"destination": "/data", "type": "bind", "source": "/scratch/a",
                               "options": ["rbind", "ro", "rprivate"]}
    assert mounts["/.strata/lib"]["source"] == "/usr/lib/x86_64-linux-gnu"
    assert mounts["/.strata/unshare"]["source"] == "/usr/bin/unshare"
    assert all("ro" in mounts[d]["options"] for d in ("/.strata/lib", "/.strata/unshare"))
    # the root config is untouched by the option: a proc mount, the invoking user, a device cgroup
    root = build_config(spec(rootless=None))
    assert root["mounts"][0] == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert root["process"]["user"] == {"uid": 1234, "gid": 99} and root["process"]["args"] == ["python", "x.py"]
    assert root["linux"]["namespaces"] == [{"type": "mount"}] and "uidMappings" not in root["linux"]
    assert root["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_remap_tool_is_the_hosts_unshare_and_loader():
    if not shutil.which("unshare") or not os.path.exists(userns.LOADERS.get(os.uname().machine, "/nonexistent")):
        pytest.skip("no util-linux unshare or glibc loader here")
    t = userns.remap_tool()
    assert os.path.basename(t.unshare) == "unshare" and os.path.isfile(os.path.join(t.lib_dir, "libc.so.6"))


# ---- the caller's state dir ----------------------------------------------------------------------

def cfg(tmp_path: Path, **kw) -> EngineConfig:
    return EngineConfig(vcluster="alpha", mount_allowlist=(str(tmp_path),), denied=("/etc/munge",),
                        hooks_dir=tmp_path / "hooks.d", cache=Path("/shared/images"), runs=Path("/shared/runs"),
                        runc_root=Path("/shared/runc/alpha"), **kw)


def test_user_state_is_a_0700_dir_of_the_callers(tmp_path):
    mine = tmp_path / "state"
    c = engine.user_state(cfg(tmp_path), {"STRATA_USER_DIR": str(mine)})
    assert (c.cache, c.runs, c.runc_root) == (mine / "images", mine / "runs", mine / "runc" / "alpha")
    assert all(d.is_dir() for d in (c.cache, c.runs, c.runc_root))
    assert mine.stat().st_mode & 0o777 == 0o700 and c.mount_allowlist == (str(tmp_path),)  # policy unchanged


def test_a_state_dir_of_someone_else_or_writable_by_others_is_refused(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(engine.os, "geteuid", lambda: os.stat(theirs).st_uid + 1000)
    with pytest.raises(EngineError, match=r"theirs \(your container state.*not a directory owned by you "
                                          r"\(owner uid \d+, you are uid \d+\); remove it, or set STRATA_USER_DIR"):
        engine.user_dir({"STRATA_USER_DIR": str(theirs)})
    monkeypatch.undo()
    link = tmp_path / "link"
    link.symlink_to(theirs)  # a symlink planted where the dir should be
    with pytest.raises(EngineError, match="not a directory owned by you"):
        engine.user_dir({"STRATA_USER_DIR": str(link)})
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(EngineError, match="writable by others.*chmod 700"):
        engine.user_dir({"STRATA_USER_DIR": str(shared)})


# ---- refusals: nothing mounted, nothing left --------------------------------------------------------

def edf(**kw) -> ResolvedEdf:
    return ResolvedEdf(name="t", chain=(Path("/edf/t.toml"),), **kw)


def test_user_namespaces_disabled_is_a_clear_refusal_and_leaves_nothing(tmp_path, monkeypatch):
    if not shutil.which("runc") or not shutil.which("unshare"):
        pytest.skip("runc and util-linux unshare are needed")
    mine, img = tmp_path / "mine", tmp_path / "img"
    mine.mkdir(mode=0o700)
    img.mkdir()
    os.chown(mine, 1000, 1000)  # the tests run as root: the dir of the (pretend) user 1000
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)

    def disabled(flags):  # what the kernel answers with user.max_user_namespaces = 0 (or the Debian knob off)
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(userns, "_unshare", disabled)  # the fork that would unshare sees it too
    c = cfg(tmp_path, nodes_dir=None)
    (tmp_path / "hooks.d").mkdir()
    with pytest.raises(EngineError, match=r"unprivileged user namespaces are disabled on this node "
                                          r"\(kernel.unprivileged_userns_clone / user.max_user_namespaces\).*EPERM"):
        engine.run(edf(image=str(img)), ["true"], c, {"STRATA_USER_DIR": str(mine), "PATH": os.environ["PATH"]})
    assert not any((mine / "runs").iterdir())  # the run dir is gone
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    # an EDF without an image runs on the host, as that user, as before
    assert engine.run(edf(image=""), ["true"], c, {"STRATA_USER_DIR": str(mine), "PATH": os.environ["PATH"]}) == 0


def _userns_works() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="squashfs-tools needed")
def test_a_user_unpacks_an_image_with_device_nodes_skipped_and_files_their_own(tmp_path):
    if not _userns_works():
        pytest.skip("`unshare --user` fails on this machine: cannot act as a user who is not root")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("x")
    img = tmp_path / "dev.sqsh"
    subprocess.run(["mksquashfs", str(root), str(img), "-quiet", "-noappend", "-all-root", "-no-progress",
                    "-p", "dev d 755 0 0", "-p", "dev/null c 666 0 0 1 3"], check=True, capture_output=True)
    (tmp_path / "bad.sqsh").write_text("not squashfs")
    code = ("import os, sys; from pathlib import Path; from user_envs import bundle\n"
            "r = bundle.unpacked_rootfs(Path(sys.argv[1]), Path(sys.argv[2]))\n"
            "print(os.geteuid(), sorted(os.listdir(r)), sorted(os.listdir(r / 'dev')), os.stat(r / 'bin/tool').st_uid)\n"
            "try:\n    bundle.unpacked_rootfs(Path(sys.argv[3]), Path(sys.argv[2]))\n"
            "except bundle.BundleError as e:\n    print('refused:', e)\n")
    r = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", sys.executable, "-c", code,
                        str(img), str(tmp_path / "cache"), str(tmp_path / "bad.sqsh")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split("\n", 1)
    assert first == "1000 ['bin', 'dev'] [] 1000"  # /dev/null skipped (runc gives every container its own /dev)
    assert second.startswith("refused: image ") and "is not a SquashFS image unsquashfs can read" in second
