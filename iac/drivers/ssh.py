"""The ssh driver: real hosts reached over SSH (a site's nodes and controllers; proven on the lab).

What differs from the local driver lives here and in the inventory it builds: how Ansible and strata log in
(the site's key, a checked known_hosts, one reused connection per host), and how a node reboots (the site's
own command, then until SSH answers). The roles are the same for every host of an ssh site.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vocab.layout import Layout
from vocab.site import Site
from vocab.ssh import check_ssh_files


class SshError(Exception):
    """A host did not answer, or refused us; the message names it and what was tried."""


def ssh_options(site: Site, layout: Layout) -> list[str]:
    """Options of every connection: the site's key, host keys checked against its known_hosts (never
    skipped), one multiplexed connection per host kept a while (a fresh one costs ~0.4 s here)."""
    control = layout.root / "ssh" / "cm"
    control.mkdir(parents=True, exist_ok=True)
    return [
        "-i", str(layout.ssh_key), "-o", f"UserKnownHostsFile={layout.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        "-o", "ControlMaster=auto", "-o", "ControlPersist=120", "-o", f"ControlPath={control}/%C",
        "-p", str(site.ssh.port),
    ]


def inventory_vars(site: Site, layout: Layout, address: str) -> dict:
    """Ansible's connection variables for one host of the site."""
    opts = ssh_options(site, layout)
    common = [o for o in opts if o.startswith(("UserKnownHostsFile", "StrictHostKeyChecking", "Control",
                                               "ConnectTimeout"))]
    return {
        "ansible_connection": "ssh",
        "ansible_host": address,
        "ansible_user": site.ssh.user,
        "ansible_port": site.ssh.port,
        "ansible_ssh_private_key_file": str(layout.ssh_key),
        "ansible_ssh_common_args": " ".join(f"-o {o}" for o in common),
        "ansible_ssh_pipelining": True,
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def check_login_files(site: Site, layout: Layout) -> list[str]:
    """What is wrong with the site's key and known_hosts (before any connection is tried)."""
    return check_ssh_files(site, layout)


def run(site: Site, layout: Layout, address: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `command` on a host as the site's SSH user."""
    args = ["ssh", *ssh_options(site, layout), f"{site.ssh.user}@{address}", command]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, 255, "", f"no answer within {timeout:.0f}s")


def answers(site: Site, layout: Layout, address: str) -> bool:
    return run(site, layout, address, "true", timeout=10).returncode == 0


def reboot(site: Site, layout: Layout, node: str, image: str) -> None:
    """Boot `node` into `image` with the site's reboot command, then wait until SSH answers and the node
    reports that image (`/etc/strata/image`), within the site's reboot timeout."""
    address = site.nodes[node].address
    argv = site.spec.reboot.argv(node, image, address)
    # strata's own commands (the lab's `strata lab reboot`) are found beside the Python that runs strata
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env = {**os.environ, "PATH": path, "STRATA_SITE": str(Path(site.path).resolve()),
           "STRATA_STATE": str(layout.root.parent)}
    timeout = site.spec.reboot.timeout
    deadline = time.monotonic() + timeout
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SshError(f"{node}: the site's reboot command {' '.join(argv)!r} failed: {e}") from None
    if r.returncode != 0:
        raise SshError(f"{node}: the site's reboot command {' '.join(argv)!r} exited {r.returncode}: "
                       f"{(r.stderr or r.stdout).strip()[-300:]}")
    # the old connection went down with the host: drop it so the next login is a fresh one
    subprocess.run(["ssh", *ssh_options(site, layout), "-O", "exit", f"{site.ssh.user}@{address}"],
                   capture_output=True, timeout=10)
    seen = ""
    while time.monotonic() < deadline:
        r = run(site, layout, address, "cat /etc/strata/image 2>/dev/null || true", timeout=10)
        seen = r.stdout.strip()
        if r.returncode == 0 and seen == image:
            return
        time.sleep(0.2)
    raise SshError(f"{node} ({address}) did not come back from its reboot into {image} within {timeout:.0f}s "
                   f"(it reports image {seen or 'none'!r}); check the node's console, then re-run: the move "
                   f"resumes at the reboot")
