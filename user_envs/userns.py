"""Rootless runs: runc started inside a user + mount namespace of the caller's, as enroot and Pyxis do.

A caller who is not root cannot mount on the host. `spawn` forks a child that enters a new user namespace
(the caller mapped to 0, `setgroups` denied) and mount namespace, mounts the run's tmpfs and overlay there
exactly as the root path does on the host (`bundle.overlay`; overlay in a user namespace needs Linux >= 5.11),
writes config.json and execs runc. runc sees it runs in a user namespace and leaves cgroups alone; the
container gets a user namespace of its own (`bundle._rootless_config`). Nothing is mounted on the host: the
mounts live in the child's namespace and vanish with it when runc (and whatever the container left running)
exits; the caller only removes the empty run dir.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import signal
from pathlib import Path

from user_envs import bundle

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
# the loaders the ELF ABIs name: what runs the host's `unshare` inside an image that may have no glibc
LOADERS = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "aarch64": "/lib/ld-linux-aarch64.so.1"}
DISABLED = ("unprivileged user namespaces are disabled on this node (kernel.unprivileged_userns_clone / "
            "user.max_user_namespaces)")


class UsernsError(Exception):
    """A rootless run cannot start here: says why and what to change."""


def remap_tool() -> bundle.RemapTool:
    """The host's util-linux `unshare` and the loader that runs it inside the container."""
    unshare = shutil.which("unshare", path="/usr/bin:/bin")
    loader = LOADERS.get(platform.machine())
    if unshare is None or loader is None or not os.path.exists(loader):
        raise UsernsError("rootless containers need util-linux's unshare in /usr/bin and the host's glibc loader "
                          f"({loader or 'unknown for ' + platform.machine()}); apt-get install util-linux, or run as root")
    with open(unshare, "rb") as f:  # --map-user/--map-group came with util-linux 2.38
        if b"map-user" not in f.read():
            raise UsernsError(f"{unshare} has no --map-user (util-linux >= 2.38 needed); install a newer util-linux, "
                              "or run as root")
    return bundle.RemapTool(unshare=os.path.realpath(unshare), loader=os.path.realpath(loader))


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def enter(uid: int, gid: int) -> None:
    """Move this (single-threaded) process into a new user + mount namespace where it is root."""
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNS)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.ENOSPC, errno.EUSERS, errno.EINVAL):
            raise UsernsError(f"{DISABLED}: unshare(CLONE_NEWUSER) failed with {errno.errorcode[e.errno]}; ask the "
                              "site to enable them (sysctl user.max_user_namespaces > 0, "
                              "kernel.unprivileged_userns_clone = 1 where it exists), or run as root") from None
        raise UsernsError(f"cannot enter a user namespace: {e.strerror}") from None
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        bundle.mount("none", Path("/"), None, bundle.MS_REC | bundle.MS_PRIVATE)  # nothing propagates either way
    except OSError as e:
        raise UsernsError(f"cannot set up the user namespace: {e}") from None


def spawn(lower: Path, run_dir: Path, config: dict, runc: list[str]) -> int:
    """Start runc for the bundle at run_dir (an empty dir) in a fresh user + mount namespace; return its pid.

    The child's errors before it execs runc come back through a close-on-exec pipe and are raised here.
    """
    uid, gid = os.geteuid(), os.getegid()
    r, w = os.pipe()  # both close-on-exec: EOF once the child execs runc
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        try:
            os.close(r)
            os.closerange(3, w)  # runc's own fds only, as subprocess's close_fds does for the root path
            os.closerange(w + 1, os.sysconf("SC_OPEN_MAX"))
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; runc must not inherit that
                signal.signal(sig, signal.SIG_DFL)
            enter(uid, gid)
            try:
                bundle.overlay(lower, run_dir)
            except OSError as e:
                raise UsernsError(f"cannot mount the run's overlay in the user namespace ({e}); overlay mounts "
                                  "there need Linux >= 5.11") from None
            bundle.write_config(run_dir, config)
            os.execvp(runc[0], runc)
        except BaseException as e:  # noqa: BLE001 - report everything, then leave without Python's cleanup
            try:
                os.write(w, (str(e) if isinstance(e, UsernsError) else f"{type(e).__name__}: {e}").encode())
            finally:
                os._exit(127)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        error = f.read().decode()
    if error:
        os.waitpid(pid, 0)
        raise UsernsError(error)
    return pid
