"""The lab: real, separate hosts on this machine, each a set of Linux namespaces running its own sshd.

`up(spec)` makes the bridge, one network namespace + veth per host, boots every host (lab_host) and writes the
site's SSH key pair and a known_hosts holding every host's key. Everything it makes is named in the record
`<lab>/lab.json` *before* it is made, so `down` (and the next `up`) find exactly those: interfaces and
namespaces by their recorded names, processes by recorded pid + start time or by being inside a recorded
namespace — never by a name pattern. `reboot(root, host, image)` powers a host off, resets its writable layer
from the image and boots it again; it returns once its sshd answers.

An image is a seed dir `<lab>/images/<image>/` whose files (inside the private dirs only) are copied into the
fresh layer; a missing dir is the empty image. The host finds the image it booted in `/etc/strata/image`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from iac.drivers import lab_net
from iac.drivers.lab_host import (SSHD, HostFiles, Proc, boot, check_image_dir, check_image_name, ensure_mount_points,
                                  find_init,
                                  generate_host_keys, kill_all, sshd_answers, wait_sshd)
from iac.drivers.lab_spec import LabError, LabHost, LabSpec, netns_name, routed_networks, veth_name
from vocab.files import write_atomic

RECORD = "lab.json"
TOOLS = (("ip", "iproute2"), ("nsenter", "util-linux"), ("unshare", "util-linux"),
         ("ssh-keygen", "openssh-client"), (SSHD, "openssh-server"))


# ---- preconditions ------------------------------------------------------------------------------------

def namespaces_unavailable() -> str | None:
    """Why this machine cannot make a lab host's namespaces (None if it can): for a clear skip or error."""
    if os.geteuid() != 0:
        return "the lab makes network namespaces, interfaces and mounts: run it as root"
    for exe, pkg in TOOLS:
        if not shutil.which(exe):
            return f"{exe} not found (Debian package {pkg}): run make setup"
    p = subprocess.run(["unshare", "--net", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "true"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return f"this machine does not allow new network/mount/PID namespaces ({p.stderr.strip() or p.returncode})"
    return None


def _require() -> None:
    if why := namespaces_unavailable():
        raise LabError(why)


# ---- the record -------------------------------------------------------------------------------------

def _spec_json(spec: LabSpec) -> dict:
    return {"site": spec.site, "root": str(spec.root), "key": str(spec.key), "known_hosts": str(spec.known_hosts),
            "bridge": spec.bridge, "subnet": spec.subnet, "bridge_address": spec.bridge_address,
            "ssh_port": spec.ssh_port, "hide": [str(p) for p in spec.hide]}


def _spec_of(rec: dict) -> LabSpec:
    hosts = tuple(LabHost(n, h["address"], h["boots"]) for n, h in rec["hosts"].items())
    return LabSpec(site=rec["site"], hosts=hosts, root=Path(rec["root"]), key=Path(rec["key"]),
                   known_hosts=Path(rec["known_hosts"]), bridge=rec["bridge"], subnet=rec["subnet"],
                   ssh_port=rec["ssh_port"], hide=tuple(Path(p) for p in rec["hide"]))


def load_record(root: Path) -> dict | None:
    """What the lab at `root` made (see the module docstring), or None if there is none."""
    try:
        return json.loads((root / RECORD).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise LabError(f"{root / RECORD} is not valid JSON; remove what it named by hand (ip netns list, "
                       "ip link) and delete it") from None


def _save(root: Path, rec: dict) -> None:
    write_atomic(root / RECORD, json.dumps(rec, indent=1) + "\n")


@contextmanager
def _locked(root: Path):
    """One lab operation at a time per lab (parallel reboots of several hosts queue for the record only)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _init_of(h: dict) -> Proc | None:
    return Proc(**h["init"]) if h.get("init") else None


# ---- up ---------------------------------------------------------------------------------------------

def _check_free(spec: LabSpec, rec: dict | None) -> None:
    """Refuse names and subnets someone else uses: the lab only ever deletes what it made itself."""
    ours_if = {h["veth"] for h in (rec or {}).get("hosts", {}).values()}
    ours_ns = {h["netns"] for h in (rec or {}).get("hosts", {}).values()}
    if rec:
        ours_if.add(rec["bridge"])
    have_if, have_ns = lab_net.links(), lab_net.namespaces()
    for h in spec.hosts:
        ns, veth = netns_name(spec.bridge, h.name), veth_name(spec.bridge, h.name)
        if ns in have_ns and ns not in ours_ns:
            raise LabError(f"network namespace {ns} exists and is not this lab's; pick another bridge name")
        if veth in have_if and veth not in ours_if:
            raise LabError(f"interface {veth} exists and is not this lab's; pick another bridge name")
    if spec.bridge in have_if and spec.bridge not in ours_if:
        raise LabError(f"interface {spec.bridge} exists and is not this lab's bridge; pick another bridge name")
    for net, dev in routed_networks():
        if net.overlaps(spec.network) and dev != spec.bridge:
            raise LabError(f"lab subnet {spec.subnet} overlaps {net} on {dev} (another lab?); give this lab "
                           "addresses in a free part of 198.18.0.0/15")


def _client_key(spec: LabSpec) -> str:
    """The site's SSH key pair (made if missing); returns the public key line."""
    pub = Path(f"{spec.key}.pub")
    if not spec.key.exists():
        spec.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pub.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"strata@{spec.site}",
                        "-f", str(spec.key)], check=True, capture_output=True)
    if not pub.exists():
        p = subprocess.run(["ssh-keygen", "-y", "-f", str(spec.key)], capture_output=True, text=True)
        if p.returncode != 0:
            raise LabError(f"cannot read the site's SSH key {spec.key}: {p.stderr.strip()}")
        write_atomic(pub, p.stdout)
    return pub.read_text().strip()


def write_known_hosts(spec: LabSpec) -> None:
    """Every lab host's key at its address; other lines of the file (other hosts) are kept."""
    ours = {h.address: HostFiles(spec, h).public_key() for h in spec.hosts}
    port = spec.ssh_port
    names = {a if port == 22 else f"[{a}]:{port}" for a in ours}
    try:
        kept = [l for l in spec.known_hosts.read_text().splitlines()
                if not l.strip() or l.startswith("#") or not set(l.split()[0].split(",")) & names]
    except FileNotFoundError:
        kept = []
    lines = kept + [f"{a if port == 22 else f'[{a}]:{port}'} {k}" for a, k in ours.items()]
    write_atomic(spec.known_hosts, "\n".join(lines) + "\n")


def _hosts_file(spec: LabSpec) -> Path:
    """/etc/hosts of every lab host: the lab's names, as a site's DNS would give them."""
    path = spec.root / "etc_hosts"
    write_atomic(path, "127.0.0.1\tlocalhost\n" + "".join(f"{h.address}\t{h.name}\n" for h in spec.hosts))
    return path


def _start(spec: LabSpec, rec: dict, names: list[str], pub: str) -> list[tuple[HostFiles, Proc]]:
    """Power on the named hosts (their namespace and veth exist): fresh layer, boot script, PID 1."""
    hosts_file = _hosts_file(spec)
    ensure_mount_points()
    started, launchers = [], []
    rs = [rec["hosts"][n] for n in names]
    for r in rs:
        image = r.get("image") or r["boots"]
        check_image_dir(image, spec.root / "images" / image)
    left = lab_net.netns_pids([r["netns"] for r in rs])  # a running host's, or a crashed run's leftovers
    kill_all([p for ps in left.values() for p in ps], [i for r in rs if (i := _init_of(r))])
    for name, r in zip(names, rs):
        files, image = HostFiles(spec, spec.host(name)), r.get("image") or r["boots"]
        files.reset_layer(image, spec.root / "images" / image, pub)
        files.write_boot(hosts_file)
        launchers.append((files, r, image, boot(files, r["netns"])))
    for files, r, image, launcher in launchers:
        init = find_init(launcher, files)
        r.update(init=init.to_json(), image=image)
        started.append((files, init))
    return started


def up(spec: LabSpec, timeout: float = 60.0, say=lambda m: None) -> dict:
    """Make the lab (or finish or repair it): every host running and answering SSH, known_hosts written.

    A host already running and answering is left alone; a host in the record but no longer in `spec` (or at
    another address) is removed. Returns {"started": [...], "running": [...]}.
    """
    _require()
    with _locked(spec.root):
        rec = load_record(spec.root)
        if rec and (rec["bridge"], rec["subnet"]) != (spec.bridge, spec.subnet):
            raise LabError(f"the lab at {spec.root} runs on bridge {rec['bridge']} ({rec['subnet']}), not "
                           f"{spec.bridge} ({spec.subnet}); run strata lab down first")
        rec = rec or {**_spec_json(spec), "hosts": {}}
        gone = [n for n, h in rec["hosts"].items()
                if n not in {x.name for x in spec.hosts} or h["address"] != spec.host(n).address]
        if gone:
            _remove_hosts(rec, gone)
            say(f"removed lab host(s) {', '.join(gone)}: no longer in the lab, or at another address")
        _check_free(spec, rec)
        rec.update(_spec_json(spec))
        for h in spec.hosts:  # names first, then make: a crash in between leaves nothing unrecorded
            r = rec["hosts"].setdefault(h.name, {})
            r.update(address=h.address, boots=h.image, netns=netns_name(spec.bridge, h.name),
                     veth=veth_name(spec.bridge, h.name))
        _save(spec.root, rec)

        lab_net.make_bridge(spec.bridge, spec.bridge_address, spec.network.prefixlen)
        lab_net.make_host_links(spec.bridge, [(r["netns"], r["veth"]) for r in rec["hosts"].values()])
        pub = _client_key(spec)
        generate_host_keys([HostFiles(spec, h) for h in spec.hosts])
        running = [h.name for h in spec.hosts if (i := _init_of(rec["hosts"][h.name])) and i.alive()
                   and sshd_answers(h.address, spec.ssh_port, timeout=0.5)]
        todo = [h.name for h in spec.hosts if h.name not in running]
        started = _start(spec, rec, todo, pub)
        _save(spec.root, rec)
        write_known_hosts(spec)  # the keys are known before the hosts answer: a slow host is not a changed one
    wait_sshd(started, timeout)
    say(f"lab {spec.site}: {len(started)} host(s) started, {len(running)} already running, bridge {spec.bridge} "
        f"({spec.bridge_address}/{spec.network.prefixlen})")
    return {"started": todo, "running": running}


# ---- down, reboot, rekey, status --------------------------------------------------------------------

def _remove_hosts(rec: dict, names: list[str]) -> None:
    """Power the hosts off, delete their veths and namespaces and their layers, and drop them from the record."""
    hs = [rec["hosts"][n] for n in names]
    pids = lab_net.netns_pids([r["netns"] for r in hs])
    kill_all([p for ps in pids.values() for p in ps], [i for r in hs if (i := _init_of(r))])
    lab_net.remove_host_links([(r["netns"], r["veth"]) for r in hs])
    for name in names:
        d = Path(rec["root"]) / "hosts" / name
        for p in (d / "layer", d / "layer.new", d / "layer.old"):
            if p.exists():
                shutil.rmtree(p)
        del rec["hosts"][name]


def down(root: Path) -> list[str]:
    """Remove everything the lab at `root` recorded: processes, namespaces, interfaces, host layers. Keeps the
    site's key, the hosts' keys and the images. Returns the hosts removed ([] if there was no lab)."""
    if not (root / RECORD).exists():
        return []
    _require()
    with _locked(root):
        rec = load_record(root)
        if rec is None:
            return []
        names = list(rec["hosts"])
        _remove_hosts(rec, names)
        _save(root, rec)
        lab_net.remove_bridge(rec["bridge"])
        (root / RECORD).unlink()
        return names


def _recorded(root: Path) -> dict:
    rec = load_record(root)
    if rec is None:
        raise LabError(f"no lab recorded at {root}: run strata lab up first")
    return rec


def reboot(root: Path, name: str, image: str, timeout: float = 60.0) -> None:
    """Power the host off (every process ends), reset its writable layer from `image`, boot it; return once
    its sshd answers (LabError after `timeout` s)."""
    check_image_name(image)
    check_image_dir(image, root / "images" / image)  # bad input changes nothing: checked before power-off
    _require()
    with _locked(root):
        rec = _recorded(root)
        spec = _spec_of(rec)
        spec.host(name)
        if rec["hosts"][name]["netns"] not in lab_net.namespaces():
            raise LabError(f"lab host {name} has no network namespace any more: run strata lab up")
        rec["hosts"][name]["image"] = image
        started = _start(spec, rec, [name], Path(f"{spec.key}.pub").read_text().strip())
        _save(root, rec)
    wait_sshd(started, timeout)


def rekey(root: Path, name: str, timeout: float = 60.0) -> None:
    """Give the host a new SSH host key and reboot it into its current image (a reinstalled machine).

    known_hosts is not updated: ssh refuses the host until `strata lab up` writes the new key there."""
    rec = _recorded(root)
    spec = _spec_of(rec)
    files = HostFiles(spec, spec.host(name))
    files.host_key.unlink(missing_ok=True)
    generate_host_keys([files])
    reboot(root, name, rec["hosts"][name].get("image") or rec["hosts"][name]["boots"], timeout)


def status(root: Path) -> dict | None:
    """The recorded lab and how each host is: running (its PID 1 alive), image booted, sshd answering."""
    rec = load_record(root)
    if rec is None:
        return None
    spec = _spec_of(rec)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = dict(zip(rec["hosts"], pool.map(
            lambda n: sshd_answers(rec["hosts"][n]["address"], spec.ssh_port, 0.5), rec["hosts"])))
    hosts = []
    for n, r in rec["hosts"].items():
        init = _init_of(r)
        hosts.append({"host": n, "address": r["address"], "running": bool(init and init.alive()),
                      "pid": init.pid if init else None, "image": HostFiles(spec, spec.host(n)).booted_image(),
                      "sshd": answers[n], "netns": r["netns"], "veth": r["veth"]})
    return {"site": rec["site"], "root": rec["root"], "bridge": rec["bridge"], "subnet": rec["subnet"],
            "bridge_address": rec["bridge_address"], "bridge_up": rec["bridge"] in lab_net.links(),
            "key": rec["key"], "known_hosts": rec["known_hosts"], "hosts": hosts}
