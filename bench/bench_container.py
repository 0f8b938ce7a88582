"""Container start overhead: strata's engine (bundle cached) against a bare `runc run` of the same bundle.

    .venv/bin/python bench/bench_container.py [--runs 20]      (root; runc, busybox-static, squashfs-tools)

Every variant starts a busybox image and runs `true`, so the figures are start + teardown overhead:
  runc          `runc run` of a prepared bundle (overlay mounted, config.json written once): the floor
  engine        user_envs.engine.run in-process: policy checks, digest lookup (cached image), overlay
                mount, config.json, `runc run`, unmount, cleanup; no hook applies
  engine+gpu    the same with the always-on GPU hook (a Python hook process; no /dev/nvidia* here)
  runc rootless `runc run` of a prepared rootless bundle, from a user namespace where uid 1000 is root: the
                floor of a rootless start (runc's own user namespace, the uid re-map in the container)
  engine rootless  user_envs.engine.run as uid 1000 without root (`unshare --user --map-user=1000`): a
                forked child enters a user + mount namespace, mounts the overlay there, execs runc
  user_envs.run the lean CLI the SPANK plugin execs (a fresh Python: imports + EDF resolve + engine)
  strata run    the full CLI (typer, site file)           [only with --cli]
The root variants run interleaved (each round starts every one of them once, the order rotated each round),
the rootless pair likewise in its own phase. Prints median, IQR and min-max in ms, and the ratio to the floor
(runc; rootless runc for the rootless rows) as median [min-max] of the per-round ratios (aim: engine <= 1.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from user_envs import bundle, engine, hooks  # noqa: E402
from user_envs.resolve import resolve  # noqa: E402


def build_image(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    for a in ("sh", "true"):
        (root / "bin" / a).symlink_to("busybox")
    out = tmp / "busybox.sqsh"
    subprocess.run(["mksquashfs", str(root), str(out), "-quiet", "-noappend", "-all-root", "-no-progress"],
                   check=True, capture_output=True)
    return out


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


USER_1000 = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]


def rootless_child(cfg_path: Path, edf_dir: Path, user_dir: Path, runs: int) -> None:
    """Runs as uid 1000 without capabilities: time bare rootless runc and the rootless engine (interleaved),
    print the figures as JSON."""
    from user_envs import userns

    environ = {**os.environ, "EDF_PATH": str(edf_dir), "STRATA_USER_DIR": str(user_dir)}
    cfg = engine.EngineConfig.load(cfg_path)
    env = resolve("bb", environ)
    engine.run(env, ["true"], cfg, environ)  # unpack once into the user's cache
    # the bare bundle: this user's cached rootfs, an overlay and a rootless config, in a namespace held by a fork
    ucfg = engine.user_state(cfg, environ)
    lower = bundle.unpacked_rootfs(Path(env.image), ucfg.cache)
    bare = ucfg.runs / "bare"
    bare.mkdir()
    spec = bundle.RunSpec(rootfs=bare / "rootfs", args=("true",), env=engine.container_env(env, environ, []), cwd="/",
                          uid=os.getuid(), gid=os.getgid(), readonly=False, rootless=userns.remap_tool())
    results, go = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # enters the user namespace once; times one bare start per go byte (interleaved with the engine's)
        os.close(results[0])
        os.close(go[1])
        userns.enter(os.geteuid(), os.getegid())
        bundle.overlay(lower, bare)
        bundle.write_config(bare, bundle.build_config(spec))
        n = iter(range(10**6))
        cmd = lambda: ["runc", "--root", str(ucfg.runc_root), "run", "--bundle", str(bare), f"bare{next(n)}"]  # noqa: E731
        for _ in range(3):
            subprocess.run(cmd(), check=True)  # warm up
        while os.read(go[0], 1):
            os.write(results[1], json.dumps(timed(lambda: subprocess.run(cmd(), check=True), 1)).encode() + b"\n")
        os._exit(0)
    os.close(results[1])
    os.close(go[0])
    out = {"runc rootless": [], "engine rootless": []}
    with os.fdopen(results[0]) as f:
        for _ in range(runs):
            os.write(go[1], b"x")
            out["runc rootless"] += json.loads(f.readline())
            out["engine rootless"] += timed(lambda: engine.run(env, ["true"], cfg, environ), 1)
    os.close(go[1])
    os.waitpid(pid, 0)
    bare.rmdir()
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cli", action="store_true", help="Also time the full `strata run` CLI.")
    p.add_argument("--rootless-child", nargs=3, type=Path, metavar=("ENGINE_JSON", "EDF_DIR", "USER_DIR"),
                   help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rootless_child:
        return rootless_child(*a.rootless_child, a.runs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-container-"))
    try:
        image = build_image(tmp)
        edf_dir = tmp / "edf"
        edf_dir.mkdir()
        (edf_dir / "bb.toml").write_text(f'image = "{image}"\n')
        environ = {**os.environ, "EDF_PATH": str(edf_dir)}
        cfg = engine.EngineConfig(vcluster="bench", mount_allowlist=("/tmp",), denied=(), hooks_dir=tmp / "hooks.d",
                                  cache=tmp / "cache", runs=tmp / "runs", runc_root=tmp / "runc")
        cfg.hooks_dir.mkdir()
        cfg_path = tmp / "engine.json"
        cfg_path.write_text(cfg.to_json())
        env = resolve("bb", environ)
        engine.run(env, ["true"], cfg, environ)  # unpack once: every timed run finds the bundle cached

        # the bare bundle: the same rootfs, overlay and config, prepared once
        lower = bundle.unpacked_rootfs(image, cfg.cache)
        bare = tmp / "bare"
        rootfs = bundle.overlay(lower, bare)  # a tmpfs run dir, like the engine's
        spec = bundle.RunSpec(rootfs=rootfs, args=("true",), env=engine.container_env(env, environ, []), cwd="/",
                              uid=0, gid=0, readonly=False)
        bundle.write_config(bare, bundle.build_config(spec))
        n = [0]

        def runc_bare():
            n[0] += 1
            subprocess.run(["runc", "--root", str(cfg.runc_root), "run", "--bundle", str(bare), f"bare{n[0]}"], check=True)

        # the same engine with the always-on GPU hook installed, in its own hooks dir
        cfg_gpu = dataclasses.replace(cfg, hooks_dir=tmp / "hooks-gpu.d")
        cfg_gpu.hooks_dir.mkdir()
        (cfg_gpu.hooks_dir / "gpu.json").write_text(json.dumps(hooks.gpu_hook_definition()))
        lean = [sys.executable, "-m", "user_envs.run", "--config", str(cfg_path), "--environment", "bb", "--", "true"]
        variants = {
            "runc": runc_bare,
            "engine": lambda: engine.run(env, ["true"], cfg, environ),
            "engine+gpu": lambda: engine.run(env, ["true"], cfg_gpu, environ),
            "user_envs.run": lambda: subprocess.run(lean, check=True, env=environ, cwd=REPO),
        }
        for _ in range(3):
            runc_bare()  # warm the page cache and runc's binary
        # Interleaved: each round starts every variant once, the order rotated each round, since the
        # machine's load drifts (2 shared cores); ratios are taken per round against that round's runc.
        results: dict[str, list[float]] = {k: [] for k in variants}
        for rnd in range(a.runs):
            names = list(variants)[rnd % len(variants):] + list(variants)[:rnd % len(variants)]
            for name in names:
                results[name] += timed(variants[name], 1)
        bundle.release(bare)
        if subprocess.run([*USER_1000, "true"], capture_output=True).returncode == 0:
            child = subprocess.run([*USER_1000, sys.executable, __file__, "--runs", str(a.runs), "--rootless-child",
                                    str(cfg_path), str(edf_dir), str(tmp / "user1000")],
                                   capture_output=True, text=True, check=True)
            results.update(json.loads(child.stdout))
        else:
            print("engine rootless: skipped, `unshare --user` fails here", file=sys.stderr)
        if a.cli:
            py = [sys.executable, "-c", "import strata.cli, user_envs.cli"]
            results["python import of the CLI"] = timed(lambda: subprocess.run(py, check=True, cwd=REPO), 5)
        # The rootless pair runs in its own phase (a child in a user namespace), interleaved with each
        # other: its per-round ratios are to the rootless runc; "x runc" is median / median of root runc.
        floor = {k: "runc rootless" if "rootless" in k else "runc" for k in results}
        base = statistics.median(results["runc"])
        print(f"{a.runs} rounds, variants interleaved; per round: median [min-max] of the ratios to the floor "
              "started in the same round (root runc; rootless runc for the rootless rows)")
        print(f"{'variant':26} {'median ms':>10} {'IQR ms':>13} {'min-max ms':>13} {'x runc':>7} {'per round':>30}")
        for k, v in results.items():
            q1, med, q3 = statistics.quantiles(v, n=4, method="inclusive")
            per_round = "-"
            if k != floor[k] and len(v) == len(results[floor[k]]):
                r = [x / f for x, f in zip(v, results[floor[k]])]
                per_round = f"{statistics.median(r):.2f} [{min(r):.2f}-{max(r):.2f}] x {floor[k]}"
            print(f"{k:26} {med:10.1f} {f'{q1:.1f}-{q3:.1f}':>13} {f'{min(v):.1f}-{max(v):.1f}':>13} "
                  f"{med / base:7.2f} {per_round:>30}")
    finally:
        if (tmp / "bare").exists():  # stopped early: unmount the bare bundle before removing the tree
            bundle.release(tmp / "bare")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
