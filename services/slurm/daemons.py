"""Daemons of a vCluster (munged, slurmctld) and of a node (slurmd), started and stopped by pid.

Never by name: several sites may run side by side on one host, and an admin's own daemons are not ours.
A pid counts as ours only if /proc/<pid>/cmdline still names what we started (pids get reused).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from services.slurm.control import SlurmClient
from vocab.layout import Layout
from vocab.names import MUNGE_SOCKET


class DaemonError(Exception):
    """A daemon could not be started or stopped; the message says why and what to do."""


REQUIRED = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "scontrol": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
}


def check_installed() -> None:
    """Fail clearly when Slurm or munge are not installed."""
    missing = sorted({pkg for exe, pkg in REQUIRED.items() if shutil.which(exe) is None})
    if missing:
        raise DaemonError(
            f"Slurm/munge not installed (missing Debian packages: {', '.join(missing)}); "
            "run `make setup` or `apt-get install slurmctld slurmd slurm-client munge`"
        )


def alive(pid: int) -> bool:
    """True while pid runs; zombies count as ended (PID 1 may reap late here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def owned_pid(pidfile: Path, *markers: str) -> int | None:
    """The pid in pidfile if that process is alive and its command line holds every marker."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if not alive(pid):
        return None
    args = cmdline(pid)
    # whole arguments only: nid001 must not match nid0010
    if not all(any(a == m or a.endswith(("/" + m, "=" + m)) for a in args) for m in markers):
        return None
    return pid


def stop_pid(pid: int, what: str, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL; returns when the process has ended."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            if not _wait_dead(pid, 5):
                raise DaemonError(f"{what} (pid {pid}) did not stop after SIGKILL")
            return
        time.sleep(0.01)


def _wait_dead(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.01)
    return not alive(pid)


def check_port_free(port: int, what: str) -> None:
    """Fail clearly if something else listens on port (daemons bind all addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            raise DaemonError(
                f"port {port} for {what} is in use by another program or site; "
                "stop it, or set ports.base in the site file to a free range"
            ) from None


def _run(args: list[str], what: str, env: dict | None = None) -> None:
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise DaemonError(f"{what} failed to start (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-500:]}")


def _wait_pidfile(pidfile: Path, what: str, log: Path, timeout: float, *markers: str) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = owned_pid(pidfile, *markers)
        if pid:
            return pid
        time.sleep(0.02)
    tail = log.read_text()[-800:] if log.exists() else "(no log)"
    raise DaemonError(f"{what} did not come up within {timeout:.0f}s; its log {log} ends:\n{tail}")


@dataclass(frozen=True)
class Munged:
    """The munge daemon of one vCluster: its own key and socket, reachable by root and `groups` only.

    groups None: every local user may reach the socket (folder 0755). `site_file` and `groups_key` say where
    the groups come from, in errors.
    """

    dir: Path
    what: str
    groups: tuple[str, ...] | None = None
    site_file: str = ""
    groups_key: str = "access.groups"

    @property
    def socket(self) -> Path:
        return self.dir / MUNGE_SOCKET

    @property
    def pidfile(self) -> Path:
        return self.dir / "munged.pid"

    @property
    def log(self) -> Path:
        return self.dir / "munged.log"

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "munged", str(self.socket))

    def start(self) -> None:
        """Start if not running; the socket's folder gets its access first, also when munged runs already."""
        from services.slurm.access import group_ids, restrict_dir

        where = (self.site_file, self.groups_key)
        gids = group_ids(self.groups, *where) if self.groups is not None else None
        self.dir.mkdir(parents=True, exist_ok=True)
        # the folder is what decides who reaches the socket (munged makes the socket itself 0777); munged
        # warns "Socket is inaccessible" when not every user may, and starts anyway (--force)
        restrict_dir(self.dir, gids, *where)
        if self.pid():
            return
        key = self.dir / "munge.key"
        if not key.exists():
            _run(["mungekey", "-c", "-k", str(key)], f"mungekey of {self.what}")
        self.socket.unlink(missing_ok=True)
        (self.dir / "munged.sock.lock").unlink(missing_ok=True)
        _run(
            ["munged", f"--key-file={key}", f"--socket={self.socket}", f"--pid-file={self.pidfile}",
             f"--log-file={self.log}", f"--seed-file={self.dir / 'munge.seed'}", "--force"],
            f"munged of {self.what}",
        )
        _wait_pidfile(self.pidfile, f"munged of {self.what}", self.log, 10, "munged", str(self.socket))

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid, f"munged of {self.what}")


@dataclass(frozen=True)
class Slurmctld:
    """The controller of one vCluster."""

    conf: Path
    pidfile: Path
    log: Path
    port: int
    what: str

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "slurmctld", str(self.conf))

    def start(self) -> None:
        if self.pid():
            return
        check_port_free(self.port, f"slurmctld of {self.what}")
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        _run(["slurmctld", "-f", str(self.conf)], f"slurmctld of {self.what}")
        _wait_pidfile(self.pidfile, f"slurmctld of {self.what}", self.log, 20, "slurmctld", str(self.conf))
        self.wait_ready()

    def wait_ready(self, timeout: float = 20) -> None:
        """Until the controller answers RPCs (it keeps jobs across restarts via its state dir)."""
        slurm = SlurmClient(self.conf)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if slurm.ping():
                return
            if not self.pid():
                break
            time.sleep(0.02)
        tail = self.log.read_text()[-800:] if self.log.exists() else "(no log)"
        raise DaemonError(f"slurmctld of {self.what} is not answering; its log {self.log} ends:\n{tail}")

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid, f"slurmctld of {self.what}")

    def restart(self) -> None:
        """Slurm 22.05 must restart to add or remove nodes (`scontrol reconfigure` is fatal then).

        Jobs survive: the controller reloads them from StateSaveLocation and slurmd keeps them running.
        """
        self.stop()
        self.start()


@dataclass(frozen=True)
class Slurmd:
    """The slurmd of one emulated node (local driver)."""

    conf: Path
    node: str
    pidfile: Path
    log: Path
    port: int

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "slurmd", self.node)

    def start(self) -> bool:
        """Start if not running; True when it was started now."""
        if self.pid():
            return False
        check_port_free(self.port, f"slurmd of {self.node}")
        self.pidfile.unlink(missing_ok=True)
        _run(["slurmd", "-f", str(self.conf), "-N", self.node], f"slurmd of {self.node}")
        _wait_pidfile(self.pidfile, f"slurmd of {self.node}", self.log, 20, "slurmd", self.node)
        return True

    def stop(self) -> bool:
        """Stop if running; True when it was stopped now."""
        pid = self.pid()
        if not pid:
            return False
        stop_pid(pid, f"slurmd of {self.node}")
        return True


# ---- a node's slurmd, found by pid whichever vCluster it serves ----

def running_slurmd(layout: Layout, node: str) -> int | None:
    """Pid of the node's slurmd, whichever vCluster it serves."""
    return owned_pid(layout.slurmd_pidfile(node), "slurmd", node)


def stop_slurmd(layout: Layout, node: str) -> bool:
    """Stop the node's slurmd by pid, whichever vCluster it serves; True if one was running."""
    pid = running_slurmd(layout, node)
    if pid:
        stop_pid(pid, f"slurmd of {node}")
    return bool(pid)
