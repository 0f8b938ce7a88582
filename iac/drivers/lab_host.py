"""One lab host: its files on this machine, how it boots, how it is powered off, how we know it answers.

On this machine a host is `<lab>/hosts/<name>/`:
- `identity/`: its sshd host key, kept across reboots (a node keeps its key; `rekey` makes a new one);
- `layer/`: its writable layer, one dir per `PRIVATE_DIRS` entry, reset from the image at every boot;
- `boot.sh`: its PID 1, written at every boot; `console.log`: what PID 1 and sshd's start printed.

Booting runs `boot.sh` as the first process of new mount, UTS and PID namespaces inside the host's network
namespace. `nsenter --net` is used, not `ip netns exec`: the latter remounts /sys, which breaks slurmd.
Killing that first process ends every process of the host, as a power-off does.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from iac.drivers.lab_spec import IMAGE_MARKER, IMAGE_RE, PRIVATE_DIRS, LabError, LabHost, LabSpec
from vocab.files import write_atomic

SSHD = "/usr/sbin/sshd"

SSHD_CONFIG = """\
# written by strata lab at every boot of {name}
ListenAddress {address}
Port {port}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
# no PAM, no passwords: the site's key is the only way in
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
UseDNS no
PrintMotd no
# strata multiplexes one connection per host (ControlMaster) and Ansible opens several sessions on it
MaxSessions 64
MaxStartups 64:30:128
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass(frozen=True)
class Proc:
    """A process named so that a reused pid is never mistaken for it: pid + start time (clock ticks)."""

    pid: int
    start: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start}


def start_time(pid: int) -> int | None:
    """The process's start time from /proc/PID/stat (field 22); None if no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    return None if fields[0] in ("Z", "X") else int(fields[19])


class HostFiles:
    """A host's files on this machine (see the module docstring)."""

    def __init__(self, spec: LabSpec, host: LabHost):
        self.spec, self.host = spec, host
        self.dir = spec.root / "hosts" / host.name
        self.identity = self.dir / "identity"
        self.layer = self.dir / "layer"
        self.boot = self.dir / "boot.sh"
        self.fstab = self.dir / "fstab"
        self.console = self.dir / "console.log"

    @property
    def host_key(self) -> Path:
        return self.identity / "ssh_host_ed25519_key"

    def public_key(self) -> str:
        """`ssh-ed25519 AAAA…` of the host (no comment)."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def booted_image(self) -> str | None:
        try:
            return (self.layer / IMAGE_MARKER).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def reset_layer(self, image: str, image_dir: Path, authorized_key: str) -> None:
        """A fresh writable layer: the private dirs, the image's files over them, then what the lab provides
        (host key, sshd config, the site's key, the image marker). Built beside the old layer, then swapped."""
        new, old = self.dir / "layer.new", self.dir / "layer.old"
        for d in (new, old):
            if d.exists():
                shutil.rmtree(d)
        for d, mode in PRIVATE_DIRS.items():
            (new / d).mkdir(parents=True, exist_ok=True)
            os.chmod(new / d, mode)
        if image_dir.is_dir():  # cp -a keeps owners and modes (munge refuses a key not owned by munge)
            subprocess.run(["cp", "-a", f"{image_dir}/.", str(new)], check=True, capture_output=True)
        ssh = new / "etc/ssh"
        shutil.copyfile(self.host_key, ssh / "ssh_host_ed25519_key")
        os.chmod(ssh / "ssh_host_ed25519_key", 0o600)
        shutil.copyfile(f"{self.host_key}.pub", ssh / "ssh_host_ed25519_key.pub")
        (ssh / "sshd_config").write_text(SSHD_CONFIG.format(name=self.host.name, address=self.host.address,
                                                            port=self.spec.ssh_port))
        (new / "root/.ssh/authorized_keys").write_text(authorized_key + "\n")
        os.chmod(new / "root/.ssh/authorized_keys", 0o600)
        (new / IMAGE_MARKER).write_text(image + "\n")
        (new / "run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        if self.layer.exists():
            self.layer.rename(old)
        new.rename(self.layer)
        if old.exists():
            shutil.rmtree(old)

    def write_boot(self, hosts_file: Path) -> None:
        """PID 1 of the host: hostname, private dirs over the machine's, its address, sshd, then reap forever."""
        lay = self.layer.resolve()
        # a target that holds the layer itself (the state dir under /tmp or /var/lib/strata) is covered last,
        # else the later binds' sources would already be hidden
        targets = sorted(PRIVATE_DIRS, key=lambda d: (lay.is_relative_to(Path("/", d)), d))
        # one `mount --all` over a per-host fstab, builtins and one `ip -batch`: an exec costs milliseconds on a
        # busy machine, and a host would otherwise need twenty
        tab = [f"{_fs(hosts_file.resolve())} /etc/hosts none bind,ro 0 0"]
        tab += [f"{_fs(lay / d)} {_fs(Path('/', d))} none bind 0 0" for d in targets]
        write_atomic(self.fstab, "\n".join(tab) + "\n")
        lines = ["#!/bin/bash", f"# PID 1 of lab host {self.host.name} (written by strata lab at every boot)",
                 "set -eu", f"echo {self.host.name} > /proc/sys/kernel/hostname",  # the UTS namespace's
                 f"mount --all --fstab {shlex.quote(str(self.fstab))}"]
        # what the control machine keeps (the site's state: other hosts' layers, the site's private key) is not
        # the host's to see: an empty read-only tmpfs covers it, where the private dirs have not already
        for p in self.spec.hide:
            q = shlex.quote(str(p.resolve()))
            lines.append(f"if [ -d {q} ]; then mount -t tmpfs -o ro,size=4k,mode=0755 strata-hidden {q}; fi")
        v6 = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
        lines += [
            f"if [ -e {v6} ]; then echo 1 > {v6}; fi",
            "ip -batch - <<EOF",
            "link set lo up", "addr flush dev eth0",
            f"addr add {self.host.address}/{self.spec.network.prefixlen} dev eth0", "link set eth0 up", "EOF",
            f"{SSHD} -f /etc/ssh/sshd_config -E /var/log/sshd.log",
            f"read -r image < /{IMAGE_MARKER}",
            f"printf '%(%F %T)T {self.host.name} booted %s, sshd on {self.host.address}\\n' -1 \"$image\"",
            "# the host's daemons are re-parented to PID 1: reap them, or dead ones would linger as zombies",
            "while :; do sleep 3600 & wait $! || true; done",
        ]
        write_atomic(self.boot, "\n".join(lines) + "\n", mode=0o755)


def _fs(path: Path) -> str:
    """A path as an fstab field (octal escapes for blanks)."""
    return str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def ensure_mount_points() -> None:
    """The machine's paths the private dirs cover must exist: a mount namespace shares the filesystem, so a
    missing one (/etc/strata, /var/lib/slurm on a fresh machine) is made here, empty, once."""
    for d in PRIVATE_DIRS:
        Path("/", d).mkdir(parents=True, exist_ok=True)


def generate_host_keys(files: list[HostFiles]) -> None:
    """A host key for every host that has none, all ssh-keygen runs at once."""
    todo = [f for f in files if not f.host_key.exists() or not Path(f"{f.host_key}.pub").exists()]
    for f in todo:
        f.identity.mkdir(parents=True, exist_ok=True)
        for p in (f.host_key, Path(f"{f.host_key}.pub")):
            p.unlink(missing_ok=True)
    procs = [subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{f.host.name}",
                               "-f", str(f.host_key)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for f in todo]
    for f, p in zip(todo, procs):
        if p.wait() != 0:
            raise LabError(f"ssh-keygen failed for lab host {f.host.name}: {p.stderr.read().decode().strip()}")


def boot(files: HostFiles, netns: str) -> subprocess.Popen:
    """Start the host's PID 1 (returns at once; `find_init` names it, `wait_sshd` waits for it)."""
    files.console.parent.mkdir(parents=True, exist_ok=True)
    with open(files.console, "ab") as log:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--uts", "--pid", "--fork",
             "--mount-proc", "--propagation", "private", "/bin/bash", str(files.boot)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def find_init(launcher: subprocess.Popen, files: HostFiles, timeout: float = 10.0) -> Proc:
    """The host's PID 1 as this machine sees it: the one child of the `unshare` that made its namespaces."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(launcher.pid)
        if kids and (st := start_time(int(kids[0]))) is not None:
            return Proc(int(kids[0]), st)
        if launcher.poll() is not None:
            raise LabError(f"lab host {files.host.name} did not boot (exit {launcher.returncode}): "
                           f"{_last_line(files.console)} (console: {files.console})")
        time.sleep(0.002)
    raise LabError(f"lab host {files.host.name}: its first process did not start within {timeout:.0f} s")


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: find them by their parent
        kids = []
        for e in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{e}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2:].split()[1] == str(pid):
                kids.append(e)
        return kids


def kill_all(pids: list[int], inits: list[Proc], timeout: float = 10.0) -> None:
    """SIGKILL hosts' PID 1s (the kernel then ends each whole PID namespace) and any other process left in their
    network namespaces (`pids`); return once every one is gone."""
    targets = [p for p in inits if p.alive()]
    targets += [Proc(p, st) for p in pids if (st := start_time(p)) is not None]
    for p in targets:
        if p.alive():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in targets):
        if time.monotonic() > deadline:
            left = ", ".join(str(p.pid) for p in targets if p.alive())
            raise LabError(f"lab host processes {left} did not end within {timeout:.0f} s of SIGKILL")
        time.sleep(0.005)


def sshd_answers(address: str, port: int, timeout: float = 0.5) -> bool:
    """True if an SSH server greets on address:port (reads its banner; logs nothing in)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def wait_sshd(hosts: list[tuple[HostFiles, Proc]], timeout: float) -> None:
    """Return once every host's sshd greets; else one LabError naming each host that did not, with why."""
    def one(item: tuple[HostFiles, Proc]) -> str | None:
        f, init = item
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sshd_answers(f.host.address, f.spec.ssh_port, timeout=0.5):
                return None
            if not init.alive():
                return f"{f.host.name}: its first process ended ({_last_line(f.console)})"
            time.sleep(0.01)
        return f"{f.host.name}: sshd did not answer on {f.host.address}:{f.spec.ssh_port} within {timeout:g} s " \
               f"(console: {f.console})"

    with ThreadPoolExecutor(max_workers=min(32, len(hosts) or 1)) as pool:
        bad = [b for b in pool.map(one, hosts) if b]
    if bad:
        raise LabError("lab host(s) did not come up: " + "; ".join(bad))


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no console log"
    return lines[-1] if lines else "console log empty"


def check_image_name(image: str) -> None:
    if not re.match(IMAGE_RE, image) or image in (".", ".."):
        raise LabError(f"bad image name {image!r}: letters, digits, '.', '_', ':' or '-'")


def check_image_dir(image: str, image_dir: Path) -> None:
    """An image may only hold files inside the private dirs: anything else would be invisible on the host."""
    if not image_dir.exists():
        return  # the default: an empty image (the private dirs, empty)
    if not image_dir.is_dir():
        raise LabError(f"image {image}: {image_dir} is not a directory")
    private = [Path(d) for d in PRIVATE_DIRS]
    for dirpath, dirnames, filenames in os.walk(image_dir):
        rel = Path(dirpath).relative_to(image_dir)
        entries = [(rel / n, True) for n in dirnames] + [(rel / n, False) for n in filenames]
        for p, is_dir in entries:
            inside = any(p.is_relative_to(d) for d in private)
            on_the_way = is_dir and any(d.is_relative_to(p) for d in private)  # etc/, var/lib/
            if not (inside or on_the_way):
                raise LabError(f"image {image}: {image_dir / p} lies outside the host's private dirs "
                               f"({', '.join('/' + d for d in PRIVATE_DIRS)}); move it into one of them")
