"""What a lab is, as plain data: its hosts (name, address), its bridge and subnet, and where it keeps things.

Pure: nothing here touches the machine except `free_subnet`, which reads the routing table. A lab is built
either from a list of `LabHost`s (tests, benchmarks) or from a driver: ssh site file (`spec_from_site`: one host
per node and per vCluster controller).

Every address lies in 198.18.0.0/15 (RFC 2544, reserved for network test labs) and nowhere else: the lab never
addresses anything outside this machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")
HOSTNAME_RE = r"^[a-z][a-z0-9-]{0,62}$"
IMAGE_RE = r"^[A-Za-z0-9._:-]+$"
IFNAME_MAX = 15  # Linux interface names: IFNAMSIZ - 1
NODE_IMAGE = "free"  # what a node boots at `lab up`: no vCluster yet (vocab.names.FREE)
CONTROLLER_IMAGE = "controller"

# What a host keeps of its own (its writable layer): each bind-mounted over the machine's path inside the
# host; everything else (binaries, libraries, /etc/passwd) is shared, as a diskless node shares its image.
PRIVATE_DIRS: dict[str, int] = {
    "etc/ssh": 0o755, "etc/munge": 0o755, "etc/slurm": 0o755, "etc/strata": 0o755,
    "root/.ssh": 0o700,  # sshd's StrictModes refuses keys in a group/world-writable dir
    "run": 0o755, "tmp": 0o1777,
    "var/spool": 0o755, "var/log": 0o755,
    "var/lib/strata": 0o755, "var/lib/munge": 0o755, "var/lib/slurm": 0o755,
}
IMAGE_MARKER = "etc/strata/image"  # inside the host: the image it booted (one line)


class LabError(Exception):
    """The lab cannot be made or used as asked: one line saying what and what to do."""


@dataclass(frozen=True)
class LabHost:
    """One host of the lab: its hostname, its address on the lab bridge, the image it boots at `up`."""

    name: str
    address: str
    image: str = NODE_IMAGE


@dataclass(frozen=True)
class LabSpec:
    """A whole lab: hosts, bridge, subnet, and its files (state dir, the site's SSH key and known_hosts)."""

    site: str
    hosts: tuple[LabHost, ...]
    root: Path  # <state>/<site>/lab: the record, host layers, images
    key: Path  # the site's client key (private; `.pub` beside it), written if missing
    known_hosts: Path  # every host's key, written by `up`
    bridge: str = ""  # default: derived from `root`
    subnet: str = ""  # default: the smallest /24 or wider network holding every host
    ssh_port: int = 22
    hide: tuple[Path, ...] = ()  # machine paths the hosts must not see; default: the site's state dir

    def __post_init__(self):
        if not self.bridge:
            object.__setattr__(self, "bridge", "sl" + _digest(str(self.root))[:8])
        if not self.subnet:
            object.__setattr__(self, "subnet", str(_covering(self.hosts)))
        object.__setattr__(self, "hide", self.hide or (self.root.parent,))
        _validate(self)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnet)

    @property
    def bridge_address(self) -> str:
        """This machine's address on the bridge: the highest one of the subnet no host uses."""
        used = {h.address for h in self.hosts}
        net = self.network
        a = net.broadcast_address - 1
        while a > net.network_address:
            if str(a) not in used:
                return str(a)
            a -= 1
        raise LabError(f"no free address left in {self.subnet} for this machine on the bridge; widen the subnet")

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name} in the lab of site {self.site}; its hosts: {', '.join(h.name for h in self.hosts)}")


def netns_name(bridge: str, host: str) -> str:
    """The host's network namespace: named after its lab's bridge, so two labs never share one."""
    return f"{bridge}-{host}"


def veth_name(bridge: str, host: str) -> str:
    """This machine's end of the host's veth: 11 characters (a name must fit in 15), unique per lab and host."""
    return "sv" + _digest(f"{bridge}/{host}")[:9]


def _digest(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _covering(hosts: tuple[LabHost, ...]) -> ipaddress.IPv4Network:
    if not hosts:
        raise LabError("a lab needs at least one host")
    try:
        addrs = [ipaddress.IPv4Address(h.address) for h in hosts]
    except ipaddress.AddressValueError as e:
        raise LabError(f"not an IPv4 address: {e}") from None
    net = ipaddress.ip_network(f"{min(addrs)}/24", strict=False)
    while not all(a in net for a in addrs):
        net = net.supernet()
    return net


def _validate(spec: LabSpec) -> None:
    if not (0 < len(spec.bridge) <= IFNAME_MAX and re.match(r"^[A-Za-z0-9_.-]+$", spec.bridge)):
        raise LabError(f"bridge name {spec.bridge!r}: 1-{IFNAME_MAX} letters, digits, '.', '_' or '-'")
    try:
        net = ipaddress.IPv4Network(spec.subnet)
    except ValueError as e:
        raise LabError(f"lab subnet {spec.subnet!r}: {e}") from None
    if not net.subnet_of(LAB_RANGE):
        raise LabError(f"lab subnet {net} lies outside {LAB_RANGE}, the range reserved for test labs; use one inside it")
    names, addrs = set(), set()
    for h in spec.hosts:
        if not re.match(HOSTNAME_RE, h.name):
            raise LabError(f"lab host name {h.name!r}: lower-case letters, digits and '-', a letter first")
        if h.name in names:
            raise LabError(f"lab host {h.name} is listed twice")
        try:
            a = ipaddress.IPv4Address(h.address)
        except ValueError as e:
            raise LabError(f"lab host {h.name}: {e}") from None
        if a not in net or a in (net.network_address, net.broadcast_address):
            raise LabError(f"lab host {h.name}: address {a} is not a host address of the lab subnet {net}")
        if a in addrs:
            raise LabError(f"lab host {h.name}: address {a} is already another host's")
        if not re.match(IMAGE_RE, h.image) or h.image in (".", ".."):
            raise LabError(f"lab host {h.name}: bad image name {h.image!r}")
        names.add(h.name)
        addrs.add(a)


def spec_from_site(site, state: Path) -> LabSpec:
    """The lab of a driver: ssh site: one host per node (booting `free`) and per vCluster controller."""
    from vocab.layout import Layout  # the site model's paths: key and known_hosts default under the state dir

    if site.spec.driver != "ssh":
        raise LabError(f"site {site.name} ({site.path}) has driver: {site.spec.driver}; the lab builds the hosts of "
                       "a driver: ssh site, e.g. --site sites/lab.yaml")
    hosts = [LabHost(n.name, n.address, NODE_IMAGE) for n in site.nodes.values()]
    hosts += [LabHost(vc.controller.host, vc.controller.address, CONTROLLER_IMAGE)
              for vc in site.vclusters.values() if vc.controller is not None]
    layout = Layout.of(site, state)
    if site.ssh.user != "root":
        raise LabError(f"{site.path}: ssh.user is {site.ssh.user}; lab hosts let root log in only: set ssh.user: root")
    return LabSpec(site=site.name, hosts=tuple(hosts), root=layout.root / "lab", key=layout.ssh_key,
                   known_hosts=layout.known_hosts, ssh_port=site.ssh.port, hide=(layout.root,))


def routed_networks() -> list[tuple[ipaddress.IPv4Network, str]]:
    """This machine's IPv4 routes (network, device), to keep a new lab off subnets already in use."""
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "main"], capture_output=True, text=True)
    routes = []
    for r in json.loads(out.stdout or "[]"):
        dst = r.get("dst", "")
        if dst and dst != "default":
            routes.append((ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False), r.get("dev", "")))
    return routes


def free_subnet(prefix: int = 24) -> str:
    """A random subnet in 198.19.0.0/16 (the half of the lab range sites leave to tests) that no route uses."""
    used = [n for n, _ in routed_networks()]
    pool = list(ipaddress.ip_network("198.19.0.0/16").subnets(new_prefix=prefix))
    random.shuffle(pool)
    for net in pool:
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise LabError("every subnet of 198.19.0.0/16 is in use on this machine; run strata lab down on old labs")
