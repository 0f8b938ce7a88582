"""OCI bundles: an image unpacked once per digest, a per-run overlay on top, and the runtime's config.json.

Images are local SquashFS files (or directories). A SquashFS image is unpacked with `unsquashfs` into
`<cache>/<sha256>/rootfs` once; later runs find it by digest. Why unpack rather than mount: `squashfuse` is
not installed here and a loop mount needs a free loop device per image and root; unpacking costs once per
image and the cached tree is shared by every run. Each run gets an overlay (lower = the cached rootfs,
upper = a scratch dir) so that `writable = true` never changes the cache and hooks can add files.
`build_config` is pure: the resolved EDF and the run's facts in, the OCI runtime config out.

A caller who is not root unpacks images into a cache of their own (device nodes cannot be created without
root and are skipped: a container's /dev is a tmpfs of runc's anyway) and gets a rootless config
(`RunSpec.rootless`, see `build_config`); `user_envs/userns.py` mounts the overlay in a user namespace.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from user_envs.edf import ENGINE_FLAGS, PROPAGATION, Mount

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_BIND, MS_REC, MS_PRIVATE = 1, 4096, 16384, 1 << 18


class BundleError(Exception):
    """An image cannot be used (missing, unreadable, bad SquashFS): names the image and a fix."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_digest(image: Path, cache: Path) -> str:
    """sha256 of an image file, remembered per (inode, size, mtime) so a cached run reads no image bytes."""
    st = image.stat()
    key = f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"
    memo = cache / "digests" / key
    try:
        return memo.read_text()
    except FileNotFoundError:
        digest = _sha256(image)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(memo)
        return digest


def unpacked_rootfs(image: Path, cache: Path) -> Path:
    """The image's root file system: the directory itself, or a SquashFS file unpacked once per digest."""
    if not image.exists():
        raise BundleError(f"image {image} does not exist; build it (docs/user_envs.md) or fix `image`")
    if image.is_dir():
        return image
    digest = image_digest(image, cache)
    rootfs = cache / digest / "rootfs"
    if rootfs.is_dir():
        return rootfs
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with open(rootfs.parent / "lock", "w") as lock:  # two tasks on one node may start together
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rootfs.is_dir():
            return rootfs
        tmp = rootfs.parent / "rootfs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        as_root = os.geteuid() == 0
        # not root: files become the caller's (unsquashfs chowns only as root) and only user.* xattrs can be set
        r = subprocess.run(["unsquashfs", "-no-progress", "-quiet", *([] if as_root else ["-user-xattrs"]),
                            "-d", str(tmp), str(image)], capture_output=True, text=True)
        if r.returncode != 0 and (as_root or not _only_device_nodes_skipped(r)):
            shutil.rmtree(tmp, ignore_errors=True)
            raise BundleError(f"image {image} is not a SquashFS image unsquashfs can read: {r.stderr.strip()}; "
                              "build it with mksquashfs DIR IMAGE")
        tmp.rename(rootfs)
    return rootfs


def _only_device_nodes_skipped(r: subprocess.CompletedProcess) -> bool:
    """unsquashfs as a user: exit 2 ("non-fatal errors") when the only errors are device nodes it may not create."""
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return r.returncode == 2 and all("because you're not superuser" in ln for ln in errors)


def mount(src: str, dst: Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(src.encode(), str(dst).encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} on {dst}: {os.strerror(e)}")


def umount(path: Path) -> None:
    _libc.umount2(str(path).encode(), 2)  # MNT_DETACH: a straggling process must not keep the run dir busy


def overlay(lower: Path, run_dir: Path) -> Path:
    """Mount a writable overlay of `lower` at run_dir/rootfs; `release` throws the run away.

    The run dir is a tmpfs of its own: what a writable container writes lives in memory (it is discarded
    anyway), and teardown is two unmounts instead of deleting a tree (~8 ms per run on ext4 here).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    mount("tmpfs", run_dir, "tmpfs", 0, "mode=0700")
    for d in ("upper", "work", "rootfs"):
        (run_dir / d).mkdir()
    merged = run_dir / "rootfs"
    mount("overlay", merged, "overlay", 0,
          f"lowerdir={lower},upperdir={run_dir / 'upper'},workdir={run_dir / 'work'}")
    return merged


def release(run_dir: Path) -> None:
    """Unmount a run's overlay and tmpfs and remove its (then empty) dir."""
    umount(run_dir / "rootfs")
    umount(run_dir)
    try:
        run_dir.rmdir()
    except OSError:  # still busy (MNT_DETACH lets it go later): leave the empty dir
        pass


# ---- config.json ---------------------------------------------------------------------------------

_NO_CAPS = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
           "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass(frozen=True)
class RunSpec:
    """What one container run needs beyond the resolved EDF."""

    rootfs: Path
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    readonly: bool
    mounts: tuple[Mount, ...] = ()
    hooks: dict[str, list[dict]] = field(default_factory=dict)  # OCI stage -> hook entries
    annotations: dict[str, str] = field(default_factory=dict)
    device_rules: tuple[dict, ...] = ()
    rootless: RemapTool | None = None  # set when the engine runs runc inside the caller's user namespace


# Where a rootless container finds the host's `unshare` and the loader that runs it (whatever libc the image has).
REMAP_DIR = "/.strata"


@dataclass(frozen=True)
class RemapTool:
    """Host files that, bound into a rootless container, let its process run as the caller's own uid.

    runc needs uid 0 in the container's user namespace (it `setuid(0)`s before it execs the process), and a
    user namespace made without a setuid helper (newuidmap) holds one uid only, so the process starts as 0
    (the caller) and util-linux `unshare --map-user=UID --map-group=GID` puts it in one more user namespace
    where the caller is UID, as enroot and Pyxis show it. Writing a map that names the parent's uid 0 needs
    CAP_SETFCAP (Linux >= 5.12), the one capability that first process keeps; the command it then execs runs
    as UID, a non-root uid, so it has none.
    """

    unshare: str   # util-linux unshare >= 2.38 (--map-user/--map-group)
    loader: str    # the host's dynamic loader, path resolved; its directory holds unshare's libraries

    @property
    def lib_dir(self) -> str:
        return os.path.dirname(self.loader)


def _bind(m: Mount) -> dict:
    """The OCI mount of one EDF bind: its flags forwarded as runc options, after the engine's defaults.

    Always `rbind` (as pyxis mounts: a user's `bind` does not drop submounts), `rw` unless `ro`/`rro` is, and
    `rprivate` unless a propagation flag is: the container's mounts must not leak back to the host.
    """
    flags = [f for f in m.flags if f not in ENGINE_FLAGS and f not in ("bind", "rbind", "ro", "rw")]
    opts = ["rbind", "ro" if m.readonly else "rw", *flags]
    if not PROPAGATION.intersection(flags):
        opts.append("rprivate")
    return {"destination": m.dst, "type": "bind", "source": m.src, "options": opts}


def build_config(spec: RunSpec) -> dict:
    """The OCI runtime config of one run: the invoking user, no capabilities, only a mount namespace
    (`spec.rootless`: the config for a caller who is not root, see `_rootless_config`).

    The container shares the host's network, PID, IPC and UTS namespaces as HPC engines do (Sarus, enroot):
    ranks reach each other by the host's addresses and the scheduler sees every process.
    """
    mounts = [  # after /proc: the root config mounts a proc, the rootless one binds the host's
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "nodev", "mode=1777", "size=1g"]},
        {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
        *[_bind(m) for m in spec.mounts],
    ]
    if spec.rootless is not None:
        return _rootless_config(spec, mounts)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": _NO_CAPS,
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": spec.readonly},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, *mounts],
        "hooks": spec.hooks,
        "annotations": spec.annotations,
        "linux": {
            "namespaces": [{"type": "mount"}],
            "resources": {"devices": [{"allow": False, "access": "rwm"}, *spec.device_rules]},
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }


def _rootless_config(spec: RunSpec, mounts: list[dict]) -> dict:
    """The config of a run whose runc is itself in the caller's user namespace (the caller is uid 0 there).

    - a user namespace of the container's own mapping the caller (0 outside) to 0: runc needs a root inside;
      the process then re-maps itself to the caller's uid/gid with the host's `unshare` (`RemapTool`), so
      `id -u` shows the caller and their files show as theirs;
    - `/proc` bound from the host: mounting a new proc needs a PID namespace of our own, and the container
      shares the host's (as in the root config); `/sys` is bound read-only as there;
    - no device cgroup rules: runc cannot manage cgroups without root (the container stays in the caller's
      cgroup, a Slurm job's for a task); devices are bound, not created (runc's defaults, the GPU hook's);
    - no capabilities for the command, `noNewPrivileges`.
    """
    tool = spec.rootless
    assert tool is not None
    loader = f"{REMAP_DIR}/lib/{os.path.basename(tool.loader)}"
    remap = [loader, "--library-path", f"{REMAP_DIR}/lib", f"{REMAP_DIR}/unshare", "--user",
             f"--map-user={spec.uid}", f"--map-group={spec.gid}", "--"]
    helper = ["rbind", "ro", "nosuid", "nodev"]
    setfcap = ["CAP_SETFCAP"]  # for unshare's map write only: the command it execs runs as a non-root uid
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [*remap, *spec.args],
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": {**_NO_CAPS, "bounding": setfcap, "effective": setfcap, "permitted": setfcap},
            "noNewPrivileges": True,
        },
        "root": {"path": str(spec.rootfs), "readonly": spec.readonly},
        "mounts": [
            {"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind", "nosuid", "noexec", "nodev"]},
            *mounts,
            {"destination": f"{REMAP_DIR}/lib", "type": "bind", "source": tool.lib_dir, "options": helper},
            {"destination": f"{REMAP_DIR}/unshare", "type": "bind", "source": tool.unshare, "options": helper},
        ],
        "hooks": spec.hooks,
        "annotations": spec.annotations,
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            "maskedPaths": _MASKED,
            "readonlyPaths": _READONLY,
        },
    }


def write_config(run_dir: Path, config: dict) -> None:
    (run_dir / "config.json").write_text(json.dumps(config))
