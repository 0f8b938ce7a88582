"""OCI createContainer hook: bind host libraries (and, for the GPU hook, NVIDIA devices) into a container.

Run by runc inside the container's mount namespace before `pivot_root` (host paths still visible), with the
OCI state JSON on stdin. Standalone on purpose (stdlib only, `python -I -S`: no site, no .pth imports): it starts in ~20 ms.
    hook_inject.py --name NAME --dest /opt/strata/hooks/NAME/lib [--gpu] [LIBRARY ...]
The GPU hook takes the node's root from the annotation `org.strata.node_root` (the local site's node roots
stand for `/`), binds `dev/nvidia*` to `/dev/` and the driver libraries `libcuda*`, `libnvidia*` to --dest.
Libraries go in `/etc/ld.so.conf.d/strata-NAME.conf` too, so `ldconfig` in a glibc image finds them.
"""

import ctypes
import glob
import json
import os
import sys

MS_BIND, MS_REC = 4096, 16384
_libc = ctypes.CDLL(None, use_errno=True)


def bind(src: str, dst: str) -> None:
    """Create a placeholder at dst (file or dir, like src) and bind src over it."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    elif not os.path.exists(dst):
        open(dst, "a").close()
    if _libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None) != 0:
        e = ctypes.get_errno()
        sys.exit(f"strata hook: bind {src} -> {dst}: {os.strerror(e)}")


def main(argv: list[str]) -> None:
    name, dest, gpu, libs = None, None, False, []
    it = iter(argv)
    for a in it:
        if a == "--name":
            name = next(it)
        elif a == "--dest":
            dest = next(it)
        elif a == "--gpu":
            gpu = True
        else:
            libs.append(a)
    state = json.load(sys.stdin)
    with open(os.path.join(state["bundle"], "config.json")) as f:
        rootfs = json.load(f)["root"]["path"]
    rootfs = rootfs if os.path.isabs(rootfs) else os.path.join(state["bundle"], rootfs)
    if gpu:
        node_root = state.get("annotations", {}).get("org.strata.node_root", "/")
        devices = sorted(glob.glob(os.path.join(node_root, "dev", "nvidia*")))
        if not devices:
            return  # a node without GPUs: nothing to inject
        for d in devices:
            bind(d, os.path.join(rootfs, "dev", os.path.basename(d)))
        for pattern in ("libcuda.so*", "libnvidia-*.so*"):
            for lib_dir in ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib64", "usr/lib"):
                libs += sorted(glob.glob(os.path.join(node_root, lib_dir, pattern)))
    for lib in libs:
        if not os.path.exists(lib):
            sys.exit(f"strata hook {name}: host library {lib} does not exist; fix the vCluster's hook libraries")
        bind(lib, os.path.join(rootfs, dest.lstrip("/"), os.path.basename(lib)))
    if libs:
        conf = os.path.join(rootfs, "etc", "ld.so.conf.d", f"strata-{name}.conf")
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        with open(conf, "w") as f:
            f.write(dest + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
