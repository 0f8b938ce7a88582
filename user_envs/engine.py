"""The container engine: a resolved EDF + a command -> an OCI bundle run by `runc`, as the invoking user.

Policy first, then the run: hooks the EDF enables must be offered by the vCluster; every mount source must
lie under the vCluster's allowlist and neither be, lie in nor contain a denied path (munge, every vCluster's
state), symlinks and `..` resolved; a registry image must first be imported into a SquashFS file. As root
(as slurmstepd runs it), the engine runs runc rootful and the process in the container as the invoking user
(`SLURM_JOB_UID` in a job, `SUDO_UID` under sudo, else our uid), with no capabilities and `noNewPrivileges`.
As any other user it runs rootless, as enroot/Pyxis do: runc inside a user namespace of the caller's
(`userns.py`), state (image cache, run dirs, runc's) in a directory of the caller's (`user_state`), the
process as the caller, without capabilities.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from user_envs import bundle, hooks, userns
from user_envs.edf import Mount
from user_envs.resolve import ResolvedEdf

ALWAYS_DENIED = ("/etc/munge", "/run/munge", "/var/run/munge", "/var/lib/munge")


class EngineError(Exception):
    """The engine refuses or cannot run an environment: says why and how to fix it (CLI exit 2)."""


@dataclass(frozen=True)
class EngineConfig:
    """One vCluster's installed engine settings (`vclusters/<v>/etc/container-engine/engine.json`)."""

    vcluster: str
    mount_allowlist: tuple[str, ...]
    denied: tuple[str, ...]      # never mountable: munge, the site's state (every vCluster's sockets and keys)
    hooks_dir: Path
    cache: Path                  # unpacked images by digest
    runs: Path                   # per-run bundles (overlay upper + config.json)
    runc_root: Path              # runc's state dir for this vCluster's containers
    nodes_dir: Path | None = None  # local site: node roots under nodes_dir/<nid>/root
    slurm_conf: Path | None = None  # the vCluster's slurm.conf: its TaskProlog runs before a task's container

    @classmethod
    def load(cls, path: Path) -> "EngineConfig":
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise EngineError(f"the container engine is not installed for this vCluster ({path} is missing); "
                              "run `strata engine install VCLUSTER`") from None
        return cls(vcluster=d["vcluster"], mount_allowlist=tuple(d["mount_allowlist"]), denied=tuple(d["denied"]),
                   hooks_dir=Path(d["hooks_dir"]), cache=Path(d["cache"]), runs=Path(d["runs"]),
                   runc_root=Path(d["runc_root"]), nodes_dir=Path(d["nodes_dir"]) if d.get("nodes_dir") else None,
                   slurm_conf=Path(d["slurm_conf"]) if d.get("slurm_conf") else None)

    def to_json(self) -> str:
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if v is not None}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def node_root(self, environ: Mapping[str, str]) -> str:
        """The `/` of the node this runs on: the local site's node root inside a job, else `/`."""
        node = environ.get("SLURMD_NODENAME")
        if self.nodes_dir and node and (self.nodes_dir / node / "root").is_dir():
            return str(self.nodes_dir / node / "root")
        return "/"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def protects(path: str) -> str:
    """What a denied path holds, for the refusal: the host's munge, or strata's state."""
    if path in ALWAYS_DENIED:
        return "the host's munge key and socket"
    return "strata's state: every vCluster's munge key and socket, Slurm state, users' runs"


def protected_overlap(src: str, denied: tuple[str, ...]) -> tuple[str, str] | None:
    """How a resolved mount source meets the denied paths: ("is" | "lies in" | "contains", path), else None.

    A source that *contains* a denied path exposes it as much as one inside it (`/srv` holds `/srv/strata`;
    `/` holds everything). Each denied path counts as written and resolved (a denied symlink, `/var/run`).
    The nearest is named: the path it is, else the deepest it lies in, else the shallowest it contains.
    """
    hits = []
    for d in denied:
        for p in dict.fromkeys((os.path.abspath(d), os.path.realpath(d))):
            if src == p:
                hits.append((0, 0, "is", d))
            elif _under(src, p):
                hits.append((1, -len(p), "lies in", d))
            elif _under(p, src):
                hits.append((2, len(p), "contains", d))
    return min(hits)[2:] if hits else None


def check_policy(env: ResolvedEdf, cfg: EngineConfig, offered: dict[str, dict]) -> None:
    """Refuse hooks the vCluster does not offer and mounts outside its allowlist, or that are, lie in or
    contain a denied path (symlinks and `..` resolved first: what runc binds is the resolved source)."""
    for name in hooks.requested_hooks(env.annotations):
        if name not in offered:
            raise EngineError(
                f"{env.chain[-1]}: annotations: com.hooks.{name}.enabled: vCluster {cfg.vcluster} does not offer "
                f"the hook {name!r} (offered: {', '.join(sorted(offered)) or 'none'}); remove the annotation "
                "or ask for the hook in the site file (container_engine.hooks)")
    for m in env.mounts:
        src = os.path.realpath(m.src)  # a symlink or `..` must not lead around the allowlist or the denied paths
        if not os.path.exists(src):
            raise EngineError(f"{env.chain[-1]}: mounts: {m}: the source {m.src} does not exist; create it or fix the path")
        if hit := protected_overlap(src, cfg.denied):
            how, denied = hit
            shown = src if src == m.src else f"{src} (resolved from {m.src})"
            fix = (f"mount only what you need below {src}, none of it holding {denied}" if how == "contains"
                   else "remove the mount")
            raise EngineError(f"{env.chain[-1]}: mounts: {m}: {shown} {how} {denied} ({protects(denied)}), "
                              f"which containers may never mount; {fix}")
        if not any(_under(src, os.path.realpath(a)) for a in cfg.mount_allowlist):
            raise EngineError(f"{env.chain[-1]}: mounts: {m}: {src} is outside the paths vCluster {cfg.vcluster} "
                              f"allows ({', '.join(cfg.mount_allowlist)}); mount something below them, or ask for "
                              "the path in the site file (container_engine.mount_allowlist)")


def invoking_user(environ: Mapping[str, str]) -> tuple[int, int]:
    """The user the container process runs as."""
    if os.geteuid() == 0:
        for u, g in (("SLURM_JOB_UID", "SLURM_JOB_GID"), ("SUDO_UID", "SUDO_GID")):
            if environ.get(u, "").isdigit() and environ.get(g, "").isdigit():
                return int(environ[u]), int(environ[g])
    return os.getuid(), os.getgid()


def user_dir(environ: Mapping[str, str]) -> Path:
    """Where a rootless caller's engine state lives: `STRATA_USER_DIR`, else `/tmp/strata-<uid>` (node-local).

    Not `$XDG_RUNTIME_DIR`: in a Slurm task it is the submitting shell's (a login node's path), and it is a
    small RAM tmpfs removed at logout, a poor home for unpacked images. Created 0700; refused when it is not a
    directory of the caller's or others may write to it (they could plant an image or a config).
    """
    uid = os.geteuid()
    base = Path(environ.get("STRATA_USER_DIR") or f"/tmp/strata-{uid}")
    fix = "remove it, or set STRATA_USER_DIR to a directory of yours (mode 0700)"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(base)
    except OSError as e:
        raise EngineError(f"cannot create {base} for your container state ({e.strerror}); {fix}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise EngineError(f"{base} (your container state: image cache, run dirs) exists but is not a directory "
                          f"owned by you (owner uid {st.st_uid}, you are uid {uid}); {fix}")
    if st.st_mode & 0o022:
        raise EngineError(f"{base} (your container state) is writable by others (mode {st.st_mode & 0o777:o}); "
                          f"chmod 700 {base}")
    return base


def user_state(cfg: EngineConfig, environ: Mapping[str, str]) -> EngineConfig:
    """The vCluster's engine settings with the image cache, run dirs and runc's state in the caller's dir."""
    base = user_dir(environ)
    dirs = {"cache": base / "images", "runs": base / "runs", "runc_root": base / "runc" / cfg.vcluster}
    for d in dirs.values():
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return dataclasses.replace(cfg, **dirs)


def container_env(env: ResolvedEdf, environ: Mapping[str, str], hook_names: list[str]) -> dict[str, str]:
    """The caller's environment, the EDF's `[env]` on top (`""` unsets), hook libraries on LD_LIBRARY_PATH."""
    out = dict(environ)
    for k, v in env.env.items():
        if v == "":
            out.pop(k, None)
        else:
            out[k] = v
    lib_dirs = [hooks.HOOK_LIB_DIR.format(name=n) for n in hook_names]
    if lib_dirs:
        out["LD_LIBRARY_PATH"] = ":".join([*lib_dirs, *filter(None, [out.get("LD_LIBRARY_PATH")])])
    return out


def _run_on_host(env: ResolvedEdf, argv: list[str], environ: Mapping[str, str]) -> int:
    """`image = ""`: no container; the EDF's environment and workdir still apply."""
    return subprocess.run(argv, env=container_env(env, environ, []), cwd=env.workdir).returncode


def _is_local(image: str) -> bool:
    return image.startswith("/") and "#" not in image


def run(env: ResolvedEdf, argv: list[str], cfg: EngineConfig, environ: Mapping[str, str] | None = None) -> int:
    """Run argv in the environment; return its exit status."""
    environ = dict(os.environ if environ is None else environ)
    if not argv:
        raise EngineError("no command given; write `strata run --environment=NAME -- CMD …`")
    offered = hooks.load_hooks(cfg.hooks_dir)
    check_policy(env, cfg, offered)
    if env.image == "":
        return _run_on_host(env, argv, environ)
    if not env.image.startswith("/") and "#" not in env.image and Path(env.image).exists():
        raise EngineError(f"{env.chain[-1]}: image: {env.image!r} reads as a registry image, but it is a path here: "
                          f"write \"./{env.image}\" (taken from the working directory) or an absolute path")
    if not _is_local(env.image):
        raise EngineError(f"{env.chain[-1]}: image: {env.image!r} is a registry image and this engine pulls "
                          "nothing; import it into a SquashFS file (e.g. `enroot import` or mksquashfs of an "
                          "unpacked image) and set image = \"/path/to/image.sqsh\"")
    rootless = None
    if os.geteuid() != 0:  # rootless: runc in a user namespace of ours, state in a dir of ours
        try:
            rootless = userns.remap_tool()
        except userns.UsernsError as e:
            raise EngineError(str(e)) from None
        cfg = user_state(cfg, environ)
    try:
        lower = bundle.unpacked_rootfs(Path(env.image), cfg.cache)
    except bundle.BundleError as e:
        raise EngineError(f"{env.chain[-1]}: image: {e}") from None
    if env.entrypoint:
        if not (lower / "etc" / "rc").exists():
            raise EngineError(f"{env.chain[-1]}: entrypoint: the image has no entrypoint (/etc/rc, enroot's "
                              "convention); set entrypoint = false")
        argv = ["/etc/rc", *argv]
    mounts = tuple(_host_mount(m, cfg, env) for m in env.mounts)
    annotations = {**env.annotations, hooks.NODE_ROOT_ANNOTATION: cfg.node_root(environ)}
    names, oci_hooks = hooks.oci_hooks(offered, annotations)
    uid, gid = invoking_user(environ)
    run_id = f"{cfg.vcluster}-{uuid.uuid4().hex[:12]}"
    run_dir = cfg.runs / run_id
    gpu_devices = hooks.GPU_HOOK in names and any(Path(annotations[hooks.NODE_ROOT_ANNOTATION], "dev").glob("nvidia*"))
    common = dict(args=tuple(argv), env=container_env(env, environ, [n for n in names if n != hooks.GPU_HOOK]),
               cwd=env.workdir or "/", uid=uid, gid=gid, readonly=not env.writable, mounts=mounts,
               hooks=oci_hooks, annotations=annotations)
    if rootless:  # the overlay is mounted in the user namespace runc starts from, not here
        config = bundle.build_config(bundle.RunSpec(rootfs=run_dir / "rootfs", rootless=rootless, **common))
        return _runc_run_rootless(cfg, lower, run_dir, run_id, config)
    rootfs = bundle.overlay(lower, run_dir)
    try:
        spec = bundle.RunSpec(
            rootfs=rootfs, **common,
            # the GPU hook binds /dev/nvidia*; the device cgroup must let the user open them (major 195)
            device_rules=({"allow": True, "type": "c", "major": 195, "access": "rwm"},) if gpu_devices else ())
        bundle.write_config(run_dir, bundle.build_config(spec))
        return _runc_run(cfg, run_dir, run_id)
    finally:
        bundle.release(run_dir)


def _host_mount(m: Mount, cfg: EngineConfig, env: ResolvedEdf) -> Mount:
    """The bind runc makes: the source the policy checked (symlinks resolved); for a `sqsh` mount, the
    image's unpacked tree (cached by digest like images), read-only."""
    if "sqsh" not in m.flags:
        return Mount(os.path.realpath(m.src), m.dst, m.flags)
    try:
        tree = bundle.unpacked_rootfs(Path(m.src), cfg.cache)
    except bundle.BundleError as e:
        raise EngineError(f"{env.chain[-1]}: mounts: {m}: {e}") from None
    return Mount(str(tree), m.dst, tuple(f for f in m.flags if f not in ("sqsh", "rw")) + ("ro",))


def _runc_run(cfg: EngineConfig, run_dir: Path, run_id: str) -> int:
    """`runc run` in the foreground; signals that reach us (Slurm's, Ctrl-C) are passed on to runc."""
    if shutil.which("runc") is None:
        raise EngineError("runc is not installed: apt-get install runc (make setup does)")
    cmd = ["runc", "--root", str(cfg.runc_root), "run", "--bundle", str(run_dir), run_id]
    proc = subprocess.Popen(cmd)
    return _wait_forwarding(proc.send_signal, proc.wait)


def _wait_forwarding(send_signal, wait) -> int:
    """Wait for runc, passing on the signals that reach us (Slurm's, Ctrl-C); its exit status, shell-style."""
    forward = lambda sig, _frame: send_signal(sig)  # noqa: E731
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        rc = wait()
        return rc if rc >= 0 else 128 - rc  # runc itself killed: report it the way a shell would
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _runc_run_rootless(cfg: EngineConfig, lower: Path, run_dir: Path, run_id: str, config: dict) -> int:
    """`runc run` from a user + mount namespace of the caller's, where the run's overlay is mounted
    (`userns.spawn`); the mounts go with the namespace, so teardown is removing the empty run dir."""
    if shutil.which("runc") is None:
        raise EngineError("runc is not installed: apt-get install runc (make setup does)")
    cmd = ["runc", "--root", str(cfg.runc_root), "run", "--bundle", str(run_dir), run_id]
    run_dir.mkdir()
    try:
        pid = userns.spawn(lower, run_dir, config, cmd)
        return _wait_forwarding(lambda sig: os.kill(pid, sig),
                                lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    except userns.UsernsError as e:
        raise EngineError(str(e)) from None
    finally:
        try:
            run_dir.rmdir()
        except OSError:
            pass


def task_prolog(slurm_conf: Path | None, environ: dict[str, str]) -> dict[str, str]:
    """Run the vCluster's TaskProlog for a task of an `srun` step and apply its output to the environment.

    The SPANK plugin execs the engine from `task_init`, which Slurm calls *before* it runs TaskProlog, so
    the engine runs it instead, with Slurm's protocol: `export NAME=VALUE`, `unset NAME`, `print TEXT`.
    """
    if slurm_conf is None or "SLURM_STEP_ID" not in environ or not slurm_conf.exists():
        return environ
    script = None
    for line in slurm_conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "taskprolog":
            script = value.split("#")[0].strip()
    if not script:
        return environ
    r = subprocess.run([script], env=environ, capture_output=True, text=True)
    out = dict(environ)
    for line in r.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "export" and "=" in rest:
            k, _, v = rest.partition("=")
            out[k.strip()] = v
        elif word == "unset":
            out.pop(rest.strip(), None)
        elif word == "print":
            print(rest, flush=True)
    return out


def run_named(name: str, argv: list[str], cfg_path: Path, environ: Mapping[str, str] | None = None) -> int:
    """Resolve EDF `name` and run argv in it (the entry point of `strata run` and of the SPANK plugin)."""
    from user_envs.resolve import resolve

    environ = dict(os.environ if environ is None else environ)
    cfg = EngineConfig.load(cfg_path)
    environ = task_prolog(cfg.slurm_conf, environ)
    return run(resolve(name, environ), argv, cfg, environ)
