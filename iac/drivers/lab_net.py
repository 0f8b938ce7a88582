"""The lab's network on this machine: one bridge with this machine's address, and per host a network namespace
with one veth into the bridge (`eth0` inside). Every change is an `ip` command on names the caller recorded.

No route, NAT or forwarding rule is added anywhere: a host's only route is its subnet, so nothing it sends can
leave the lab. IPv6 is switched off on every lab interface, so the only addresses are the lab's IPv4 ones.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from iac.drivers.lab_spec import LabError

NETNS_DIR = Path("/run/netns")


def _ip(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if check and p.returncode != 0:
        what = (p.stderr or p.stdout).strip().splitlines()
        raise LabError(f"ip {' '.join(args)} failed: {what[-1] if what else f'exit {p.returncode}'}")
    return p


def links() -> set[str]:
    """Names of this machine's (root namespace) interfaces."""
    return {l["ifname"] for l in json.loads(_ip("-j", "link", "show").stdout or "[]")}


def namespaces() -> set[str]:
    """Names of the network namespaces `ip netns` knows."""
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def _no_ipv6(ifname: str) -> None:
    p = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if p.exists():  # a kernel without IPv6 has nothing to switch off
        p.write_text("1")


def make_bridge(name: str, address: str, prefix: int) -> None:
    """The lab bridge with this machine's address on it (the way strata reaches the hosts), if missing."""
    if name not in links():
        _ip("link", "add", name, "type", "bridge")
        _no_ipv6(name)  # before it goes up: no link-local address is ever assigned
    _ip("addr", "replace", f"{address}/{prefix}", "dev", name)
    _ip("link", "set", name, "up")


def make_host_links(bridge: str, hosts: list[tuple[str, str]]) -> None:
    """For each (netns, veth): the namespace and the veth pair (`eth0` inside), plugged into the bridge.

    Creates only what is missing, so a crashed `up` is finished by the next; one `ip -batch` per phase keeps it
    to three processes whatever the number of hosts.
    """
    have_ns, have_if = namespaces(), links()
    make = [f"netns add {ns}" for ns, _ in hosts if ns not in have_ns]
    make += [f"link add {veth} type veth peer name eth0 netns {ns}" for ns, veth in hosts if veth not in have_if]
    if make:
        _ip("-batch", "-", stdin="\n".join(make) + "\n")
    for _, veth in hosts:
        _no_ipv6(veth)
    _ip("-batch", "-", stdin="".join(f"link set {veth} master {bridge} up\n" for _, veth in hosts))


def remove_host_links(hosts: list[tuple[str, str]]) -> None:
    """Delete each (netns, veth): the veth pair first, then the namespace. In this order: a namespace's
    interfaces go away asynchronously after `ip netns del`, while deleting a veth removes both ends at once."""
    have_if, have_ns = links(), namespaces()
    gone = [f"link del {veth}\n" for _, veth in hosts if veth in have_if]
    gone += [f"netns del {ns}\n" for ns, _ in hosts if ns in have_ns]
    if gone:
        _ip("-batch", "-", stdin="".join(gone))


def remove_bridge(name: str) -> None:
    if name in links():
        _ip("link", "del", name)


def netns_pids(names: list[str]) -> dict[str, list[int]]:
    """Every process in each named network namespace (what `ip netns pids` says, for all in one /proc scan)."""
    want = {}
    for n in names:
        try:
            st = os.stat(NETNS_DIR / n)
        except FileNotFoundError:
            continue
        want[(st.st_dev, st.st_ino)] = n
    out: dict[str, list[int]] = {n: [] for n in names}
    if not want:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) in want:
            out[want[(st.st_dev, st.st_ino)]].append(int(entry))
    return out
