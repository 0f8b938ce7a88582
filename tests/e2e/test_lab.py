"""The lab: separate hosts on this machine (network, mount, UTS and PID namespaces, each with a real sshd).

Every test makes its own lab: its own bridge name and a random subnet of 198.19.0.0/16 (inside the test range
198.18.0.0/15), so labs never clash. No test sends traffic to anything but loopback and lab addresses: the
"no way out" checks read the hosts' routing tables.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from iac.drivers import lab, lab_net
from iac.drivers.lab_host import Proc, start_time
from iac.drivers.lab_spec import LabError, LabHost, LabSpec, free_subnet, spec_from_site
from vocab.site import load_site

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def namespaces():
    if why := lab.namespaces_unavailable():
        pytest.skip(f"no lab here: {why}")


def ssh(spec: LabSpec, address: str, cmd: str, known_hosts: Path | None = None) -> subprocess.CompletedProcess:
    """Log in as strata does: the site's key, host keys checked against known_hosts, never a prompt."""
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(spec.key), "-o", f"UserKnownHostsFile={known_hosts or spec.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         f"root@{address}", cmd], capture_output=True, text=True, timeout=30)


def out(spec: LabSpec, host: LabHost, cmd: str) -> str:
    r = ssh(spec, host.address, cmd)
    assert r.returncode == 0, f"ssh {host.name} {cmd!r}: exit {r.returncode}: {r.stderr}"
    return r.stdout


def made_by(root: Path) -> dict:
    """What the record says the lab made, and every process now in its namespaces."""
    rec = lab.load_record(root)
    pids = lab_net.netns_pids([h["netns"] for h in rec["hosts"].values()])
    return {"bridge": rec["bridge"], "netns": [h["netns"] for h in rec["hosts"].values()],
            "veths": [h["veth"] for h in rec["hosts"].values()],
            "procs": [Proc(p, s) for ps in pids.values() for p in ps if (s := start_time(p)) is not None]}


def assert_gone(made: dict) -> None:
    assert not set(made["netns"]) & lab_net.namespaces(), "network namespaces left behind"
    assert not (set(made["veths"]) | {made["bridge"]}) & lab_net.links(), "interfaces left behind"
    assert not [p.pid for p in made["procs"] if p.alive()], "processes left behind"


def new_spec(tmp: Path, n: int = 2) -> LabSpec:
    net = ipaddress.ip_network(free_subnet())
    root = tmp / "state" / "t" / "lab"
    return LabSpec(site="t", hosts=tuple(LabHost(f"h{i}", str(net[i])) for i in range(1, n + 1)), root=root,
                   key=root.parent / "ssh" / "id_ed25519", known_hosts=root.parent / "ssh" / "known_hosts",
                   bridge="slt" + secrets.token_hex(3))


@pytest.fixture
def two(tmp_path, namespaces):
    """A running lab of two hosts, h1 and h2; removed (and checked removed) afterwards."""
    spec = new_spec(tmp_path)
    try:
        lab.up(spec, timeout=30)
        yield spec
    finally:
        made = made_by(spec.root) if lab.load_record(spec.root) else None
        lab.down(spec.root)
        if made:
            assert_gone(made)


def test_each_host_answers_ssh_with_its_own_name_and_checked_key(two):
    for h in two.hosts:
        assert out(two, h, "hostname").strip() == h.name
    lines = two.known_hosts.read_text().split("\n")
    assert {l.split()[0] for l in lines if l} == {h.address for h in two.hosts}


def test_hosts_reach_each_other_and_have_no_route_out(two):
    h1, h2 = two.hosts
    # h1 talks to h2's sshd over the lab network (bash's /dev/tcp: no tool needed on the host)
    assert out(two, h1, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{h2.address}/22; head -c 4 <&3'") == "SSH-"
    routes = out(two, h1, "ip -4 route show table all type unicast; ip -6 addr show").strip().splitlines()
    assert [r.split()[:3] for r in routes] == [[two.subnet, "dev", "eth0"]], routes  # the lab subnet, no IPv6
    # a lookup in the routing table, nothing sent: outside the lab there is no route at all
    r = ssh(two, h1.address, "ip route get 192.0.2.1")
    assert r.returncode != 0 and "unreachable" in r.stderr.lower(), r
    # this machine's ends carry no IPv6 either: the lab's only addresses are its IPv4 ones
    rec = lab.load_record(two.root)
    for dev in [rec["bridge"]] + [h["veth"] for h in rec["hosts"].values()]:
        assert subprocess.run(["ip", "-6", "addr", "show", "dev", dev], capture_output=True, text=True).stdout == ""
    addrs = out(two, h1, "ip -4 -o addr show | awk '{print $2, $4}'").split("\n")
    assert sorted(a for a in addrs if a) == sorted(["lo 127.0.0.1/8", f"eth0 {h1.address}/{two.network.prefixlen}"])


def test_private_dirs_are_the_hosts_own_and_the_state_is_hidden(two):
    h1, h2 = two.hosts
    probe = f"strata-lab-probe-{secrets.token_hex(4)}"
    dirs = ("/etc/slurm", "/etc/munge", "/etc/ssh", "/root/.ssh", "/run", "/tmp", "/var/spool", "/var/log",
            "/var/lib/strata")
    paths = " ".join(f"{d}/{probe}" for d in dirs)
    out(two, h1, f"for p in {paths}; do echo here > $p; done")
    assert [d for d in dirs if Path(d, probe).exists()] == [], "written on h1, visible on this machine"
    assert out(two, h2, f"for p in {paths}; do test -e $p && echo $p; done; true") == "", "h2 sees h1's files"
    assert out(two, h1, f"cat {paths}") == "here\n" * len(dirs)
    # the control machine's state (the site's private key, other hosts' layers) is not the host's to see
    assert ssh(two, h1.address, f"test -e {two.key}").returncode == 1
    assert out(two, h1, "cat /etc/strata/image").strip() == "free"


def _sleepers(spec: LabSpec, arg: str) -> list[Proc]:
    """Processes `sleep ARG` in the lab's namespaces, as this machine sees them."""
    pids = lab_net.netns_pids([lab.load_record(spec.root)["hosts"][h.name]["netns"] for h in spec.hosts])
    found = []
    for p in (p for ps in pids.values() for p in ps):
        try:
            if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", arg.encode()]:
                found.append(Proc(p, start_time(p)))
        except FileNotFoundError:
            pass
    return found


def test_reboot_ends_every_process_resets_the_layer_and_boots_the_image(two):
    h1, h2 = two.hosts
    out(two, h1, "setsid sleep 4242 </dev/null >/dev/null 2>&1 & echo x > /var/spool/left-from-before")
    sleeper = _sleepers(two, "4242")
    assert len(sleeper) == 1
    image = two.root / "images" / "img-b" / "etc" / "slurm"
    image.mkdir(parents=True)
    (image / "seed.conf").write_text("from the image\n")
    h2_init = lab.load_record(two.root)["hosts"]["h2"]["init"]

    t = time.monotonic()
    lab.reboot(two.root, "h1", "img-b", timeout=30)
    assert time.monotonic() - t < 30
    assert not sleeper[0].alive(), "a process of h1 survived its reboot"
    # sshd answers at once (reboot returned), with the same host key: known_hosts still accepts it
    assert out(two, h1, "cat /etc/strata/image; cat /etc/slurm/seed.conf; ls /var/spool") == \
        "img-b\nfrom the image\n"
    assert lab.load_record(two.root)["hosts"]["h2"]["init"] == h2_init, "h2 was rebooted too"
    assert out(two, h2, "hostname").strip() == "h2"


def test_reboot_refuses_bad_input_and_changes_nothing(two):
    init = lab.load_record(two.root)["hosts"]["h1"]["init"]
    bad = two.root / "images" / "bad" / "usr" / "bin"
    bad.mkdir(parents=True)
    (bad / "tool").write_text("x")
    with pytest.raises(LabError, match="outside the host's private dirs"):
        lab.reboot(two.root, "h1", "bad")
    with pytest.raises(LabError, match="bad image name"):
        lab.reboot(two.root, "h1", "../x")
    with pytest.raises(LabError, match="no host nope"):
        lab.reboot(two.root, "nope", "img")
    assert lab.load_record(two.root)["hosts"]["h1"]["init"] == init and Proc(**init).alive()


def test_a_changed_host_key_is_refused(two):
    h1 = two.hosts[0]
    old = two.known_hosts.with_name("known_hosts.old")
    shutil.copy(two.known_hosts, old)
    lab.rekey(two.root, "h1", timeout=30)
    r = ssh(two, h1.address, "hostname", known_hosts=old)
    assert r.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr, r
    assert ssh(two, h1.address, "hostname").returncode == 255  # known_hosts itself keeps the old key too
    lab.up(two, timeout=30)  # the lab trusts its own hosts: up writes the new key
    assert out(two, h1, "hostname").strip() == "h1"


def test_up_twice_keeps_running_hosts_and_down_removes_everything_it_made(two):
    before = lab.load_record(two.root)["hosts"]
    assert lab.up(two, timeout=30) == {"started": [], "running": ["h1", "h2"]}
    assert lab.load_record(two.root)["hosts"] == before
    made = made_by(two.root)
    assert len(made["procs"]) >= 4  # per host at least its PID 1 and sshd
    assert lab.down(two.root) == ["h1", "h2"]
    assert_gone(made)
    assert lab.down(two.root) == []  # nothing recorded: nothing to do


def test_the_lab_of_sites_lab_yaml_is_one_host_per_node_and_controller(tmp_path):
    spec = spec_from_site(load_site(REPO / "sites" / "lab.yaml"), tmp_path)
    assert [(h.name, h.image) for h in spec.hosts][-4:] == [
        ("nid008", "free"), ("clariden-ctl", "controller"), ("bristen-ctl", "controller"), ("eiger-ctl", "controller")]
    assert (spec.subnet, spec.bridge_address, len(spec.hosts)) == ("198.18.0.0/23", "198.18.1.254", 11)
    assert spec.key == tmp_path / "lab" / "ssh" / "id_ed25519" and spec.hide == (tmp_path / "lab",)


@pytest.mark.parametrize("hosts, kw, error", [
    ([("a", "10.0.0.1")], {}, "outside 198.18.0.0/15"),
    ([("a", "198.18.0.1"), ("b", "198.18.0.1")], {}, "already another host's"),
    ([("a", "198.18.0.1"), ("a", "198.18.0.2")], {}, "listed twice"),
    ([("a", "198.18.7.1")], {"subnet": "198.18.0.0/24"}, "not a host address of the lab subnet"),
    ([("a", "198.18.0.1")], {"bridge": "x" * 16}, "1-15 letters"),
    ([("A", "198.18.0.1")], {}, "lab host name 'A'"),
])
def test_a_lab_stays_in_the_test_range_with_names_that_fit(hosts, kw, error):
    with pytest.raises(LabError, match=error):
        LabSpec("t", tuple(LabHost(n, a) for n, a in hosts), Path("/tmp/x"), Path("/k"), Path("/kh"), **kw)


def test_a_missing_tool_is_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(lab, "TOOLS", lab.TOOLS + (("/usr/sbin/no-such-sshd", "openssh-server"),))
    assert lab.namespaces_unavailable() == "/usr/sbin/no-such-sshd not found (Debian package openssh-server): " \
                                          "run make setup"


# ---- through the CLI and a site file, as strata's ssh driver uses it ----------------------------------

def lab_site(tmp: Path) -> tuple[Path, dict]:
    net = ipaddress.ip_network(free_subnet())
    site = {
        "site": "t", "driver": "ssh",
        "reboot": {"command": "strata lab reboot {node} {image}", "timeout": 30},
        "nodes": [{"names": "n[1-2]", "addresses": f"{net[1]},{net[2]}", "hardware": {"cpus": 2, "memory_gib": 2}}],
        "platforms": {"p": {"vclusters": {"a": {"nodes": "n[1-2]", "controller": {"host": "a-ctl", "address": str(net[9])}}}}},
    }
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    env = {**os.environ, "STRATA_SITE": str(path), "STRATA_STATE": str(tmp / "state")}
    return path, env


def strata(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert not check or r.returncode == 0, f"strata {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def pid_1(pid: int) -> bool:
    """Whether the process is the first of its PID namespace (a host's PID 1)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(l for l in status.splitlines() if l.startswith("NSpid:")).split()[-1] == "1"


def test_up_after_a_sigkilled_up_completes(tmp_path, namespaces):
    _, env = lab_site(tmp_path)
    root = tmp_path / "state" / "t" / "lab"
    try:
        p = subprocess.Popen([sys.executable, "-m", "strata.cli", "lab", "up"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not list(root.glob("hosts/*/console.log")) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # killed once the first host is booting: names recorded, hosts half made
        p.send_signal(signal.SIGKILL)
        p.wait()
        strata(env, "lab", "up")
        st = json.loads(strata(env, "lab", "status", "--json").stdout)
        assert [(h["host"], h["running"], h["sshd"]) for h in st["hosts"]] == \
            [("n1", True, True), ("n2", True, True), ("a-ctl", True, True)]
        # exactly one host per namespace: whatever the killed run had booted was powered off first
        made = made_by(root)
        assert len([p for p in made["procs"] if pid_1(p.pid)]) == 3
    finally:
        made = made_by(root) if lab.load_record(root) else None
        strata(env, "lab", "down", check=False)
        if made:
            assert_gone(made)


def test_the_site_files_reboot_command_runs_through_the_cli(tmp_path, namespaces):
    site_file, env = lab_site(tmp_path)
    try:
        strata(env, "lab", "up")
        spec = lab._spec_of(lab.load_record(tmp_path / "state" / "t" / "lab"))
        assert spec.key == tmp_path / "state" / "t" / "ssh" / "id_ed25519"  # the site model's default paths
        argv = load_site(site_file).spec.reboot.argv("n2", "img-a", spec.host("n2").address)
        assert argv[:3] == ["strata", "lab", "reboot"]
        r = strata(env, *argv[1:])  # `strata lab reboot n2 img-a`, site and state from the environment
        assert "n2 rebooted into img-a" in r.stdout
        assert out(spec, spec.host("n2"), "hostname; cat /etc/strata/image") == "n2\nimg-a\n"
        r = strata(env, "lab", "reboot", "n9", "img-a", check=False)
        assert r.returncode == 1 and r.stderr.startswith("error: no host n9") and "Traceback" not in r.stderr
    finally:
        strata(env, "lab", "down", check=False)
