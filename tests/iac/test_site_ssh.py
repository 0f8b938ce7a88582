"""The ssh driver's part of the site file: node addresses, controller hosts, the SSH login and the reboot
command load where they belong (driver: ssh) and every bad input names the file, the key path and a fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vocab.layout import Layout
from vocab.site import SiteError, load_site, parse_site
from vocab.ssh import check_ssh_files

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "sites/lab.yaml"
LOCAL = REPO / "sites/local.yaml"
ALPS = REPO / "sites/alps.yaml"
ML = ("platforms", "ml", "vclusters")


@pytest.fixture
def lab():
    return yaml.safe_load(LAB.read_text())


@pytest.fixture
def local():
    return yaml.safe_load(LOCAL.read_text())


def problems(d) -> list[str]:
    with pytest.raises(SiteError) as e:
        parse_site(d, "sites/x.yaml")
    return str(e.value).splitlines()


def one(d, key: str) -> str:
    """The one error line of key path `key` (and it names the file)."""
    lines = [ln for ln in problems(d) if ln.startswith(f"sites/x.yaml: {key}: ")]
    assert len(lines) == 1, problems(d)
    return lines[0]


def vc(d, name: str) -> dict:
    plat = "hpc" if name == "eiger" else "ml"
    return d["platforms"][plat]["vclusters"][name]


# ---- the site files we ship ----

def test_lab_loads_with_an_address_per_node_and_a_controller_per_vcluster():
    s = load_site(LAB)
    assert s.spec.driver == "ssh"
    assert {n: node.address for n, node in s.nodes.items()} == {f"nid{i:03d}": f"198.18.1.{i}" for i in range(1, 9)}
    assert {v: (c.controller.host, c.controller.address) for v, c in s.vclusters.items()} == {
        "clariden": ("clariden-ctl", "198.18.0.11"), "bristen": ("bristen-ctl", "198.18.0.12"),
        "eiger": ("eiger-ctl", "198.18.0.13")}
    assert (s.ssh.user, s.ssh.key, s.ssh.known_hosts, s.ssh.port) == ("root", None, None, 22)
    assert (s.spec.reboot.command, s.spec.reboot.timeout) == ("strata lab reboot {node} {image}", 120)


def test_lab_has_the_shape_of_the_local_site():
    lab, local = load_site(LAB), load_site(LOCAL)
    assert lab.desired == local.desired
    assert lab.platform_of == local.platform_of
    for v in local.vclusters:
        assert lab.vclusters[v].partitions == local.vclusters[v].partitions
        assert lab.image_of(v) == local.image_of(v)
    assert [n.hardware for n in lab.nodes.values()] == [n.hardware for n in local.nodes.values()]


def test_local_site_keeps_its_behaviour_no_addresses_and_the_ssh_defaults():
    s = load_site(LOCAL)
    assert s.spec.driver == "local" and s.spec.reboot is None and s.spec.ssh is None
    assert all(n.address is None for n in s.nodes.values())
    assert all(v.controller is None for v in s.vclusters.values())
    assert check_ssh_files(s, Layout.of(s, Path("/nonexistent"))) == []  # the local driver needs no SSH files


def test_alps_loads_with_an_address_per_node_a_controller_per_vcluster_and_its_boot_tool():
    s = load_site(ALPS)
    addrs = [n.address for n in s.nodes.values()]
    assert len(set(addrs)) == len(addrs) == 2688 and addrs[0] == "10.100.0.1" and addrs[-1] == "10.100.20.128"
    assert all(v.controller for v in s.vclusters.values())
    assert "{node}" in s.spec.reboot.command


def test_ssh_files_default_under_the_state_dir_and_follow_the_site_file(lab, tmp_path):
    s = parse_site(lab, "x.yaml")
    layout = Layout.of(s, tmp_path)
    assert layout.ssh_key == tmp_path.resolve() / "lab" / "ssh" / "id_ed25519"
    assert layout.known_hosts == tmp_path.resolve() / "lab" / "ssh" / "known_hosts"
    lab["ssh"].update(key="/etc/strata/id", known_hosts="/etc/strata/kh")
    layout = Layout.of(parse_site(lab, "x.yaml"), tmp_path)
    assert (layout.ssh_key, layout.known_hosts) == (Path("/etc/strata/id"), Path("/etc/strata/kh"))


def test_ssh_section_may_be_left_out_for_its_defaults(lab):
    del lab["ssh"]
    s = parse_site(lab, "x.yaml")
    assert (s.ssh.user, s.ssh.port, s.ssh.key) == ("root", 22, None)


def test_reboot_command_becomes_words_per_node_image_optional(lab):
    r = parse_site(lab, "x.yaml").spec.reboot
    assert r.argv("nid003", "hpc-2026.11", "198.18.1.3") == ["strata", "lab", "reboot", "nid003", "hpc-2026.11"]
    lab["reboot"] = {"command": "ipmitool -H 'bmc-{node}' -U admin chassis power cycle # {address}"}
    r = parse_site(lab, "x.yaml").spec.reboot  # a BMC power-cycle takes no image
    assert r.argv("nid003", "x", "198.18.1.3")[:3] == ["ipmitool", "-H", "bmc-nid003"]
    assert r.argv("nid003", "x", "198.18.1.3")[-1] == "198.18.1.3"
    assert r.timeout == 300


# ---- driver: ssh needs every host's address, a controller per vCluster and a reboot command ----

def test_a_group_without_addresses_is_named_with_its_nodes(lab):
    del lab["nodes"][0]["addresses"]
    line = one(lab, "nodes[0].addresses")
    assert "required with driver: ssh" in line and "nid[001-008]" in line and '198.18.1.[1-8]' in line


@pytest.mark.parametrize("name", ["clariden", "eiger"])  # eiger has no nodes, but a move may give it some
def test_every_vcluster_needs_a_controller(lab, name):
    del vc(lab, name)["controller"]
    key = f"platforms.{'hpc' if name == 'eiger' else 'ml'}.vclusters.{name}.controller"
    line = one(lab, key)
    assert "required with driver: ssh" in line and f"host: {name}-ctl" in line


def test_reboot_is_required(lab):
    del lab["reboot"]
    line = one(lab, "reboot")
    assert "required with driver: ssh" in line and "{node}" in line and "{image}" in line


@pytest.mark.parametrize("command,expect", [
    ("bootctl --image {image}", "does not say which node: put {node}"),
    ("bootctl {node} {nodes}", "unknown placeholder {nodes}"),
    ("bootctl {node} {0}", "unknown placeholder {0}"),
    ("bootctl {node", "not a command template"),
    ("bootctl '{node}", "not a command template"),
    ("", "no command given"),
])
def test_bad_reboot_command(lab, command, expect):
    lab["reboot"]["command"] = command
    line = one(lab, "reboot.command")
    assert expect in line and ("{node}" in line or "{{" in line)


@pytest.mark.parametrize("timeout", [0, -5])
def test_reboot_timeout_must_be_positive(lab, timeout):
    lab["reboot"]["timeout"] = timeout
    assert "greater than 0" in one(lab, "reboot.timeout")


def test_unknown_key_in_the_ssh_parts_suggests_the_right_one(lab):
    lab["ssh"]["kee"] = "/k"
    lab["reboot"]["timout"] = 5
    vc(lab, "bristen")["controller"]["adress"] = "198.18.0.12"
    lines = problems(lab)
    assert "sites/x.yaml: ssh.kee: unknown key 'kee'; did you mean 'key'?" in lines
    assert "sites/x.yaml: reboot.timout: unknown key 'timout'; did you mean 'timeout'?" in lines
    assert ("sites/x.yaml: platforms.ml.vclusters.bristen.controller.adress: unknown key 'adress'; "
            "did you mean 'address'?") in lines


@pytest.mark.parametrize("key", ["key", "known_hosts"])
def test_ssh_paths_must_be_absolute(lab, key):
    lab["ssh"][key] = "ssh/id"
    line = one(lab, f"ssh.{key}")
    assert "'ssh/id' is not an absolute path" in line and "/etc/strata/ssh/" in line


@pytest.mark.parametrize("value,expect", [("", "pattern"), ("Root", "pattern")])
def test_ssh_user_must_be_a_user_name(lab, value, expect):
    lab["ssh"]["user"] = value
    assert expect in one(lab, "ssh.user")


def test_ssh_port_in_range(lab):
    lab["ssh"]["port"] = 70000
    assert "fix the value" in one(lab, "ssh.port")


# ---- addresses ----

@pytest.mark.parametrize("addresses,expect", [
    ("198.18.1.[1-7],198.18.1.300", "198.18.1.300 is not an IPv4 address"),
    ("198.18.1.[001-008]", "198.18.1.001 is not an IPv4 address (Leading zeros"),
    ("nid[001-008]", "nid001 is not an IPv4 address"),
    ("198.18.1.[1-8", "not a valid address range"),
    ("fd00::[1-8]", "not an IPv4 address"),
    ("", "no addresses given"),
])
def test_malformed_node_addresses(lab, addresses, expect):
    lab["nodes"][0]["addresses"] = addresses
    line = one(lab, "nodes[0].addresses")
    assert expect in line and "198.18.1.[1-8]" in line


@pytest.mark.parametrize("addr,what", [
    ("127.0.0.5", "a loopback"), ("224.0.0.9", "a multicast"), ("0.0.0.0", "the unspecified"),
    ("255.255.255.255", "a reserved (or broadcast)"), ("240.0.0.1", "a reserved"),
])
def test_addresses_must_be_unicast(lab, addr, what):
    lab["nodes"][0]["addresses"] = f"198.18.1.[1-7],{addr}"
    vc(lab, "bristen")["controller"]["address"] = addr
    assert f"{addr} is {what}" in one(lab, "nodes[0].addresses")
    assert f"{addr} is {what}" in one(lab, "platforms.ml.vclusters.bristen.controller.address")


def test_a_malformed_controller_address_is_named(lab):
    vc(lab, "eiger")["controller"]["address"] = "198.18.0"
    line = one(lab, "platforms.hpc.vclusters.eiger.controller.address")
    assert "198.18.0 is not an IPv4 address" in line and "198.18.0.11" in line


@pytest.mark.parametrize("addresses,count", [("198.18.1.[1-7]", 7), ("198.18.1.[1-9]", 9)])
def test_address_count_must_equal_node_count(lab, addresses, count):
    lab["nodes"][0]["addresses"] = addresses
    line = one(lab, "nodes[0].addresses")
    assert f"{count} addresses for 8 nodes (nid[001-008])" in line and "one address per node" in line


def test_duplicate_address_across_groups_names_both_holders(lab):
    lab["nodes"][0].update(names="nid[001-006]", addresses="198.18.1.[1-6]")
    lab["nodes"].append({**copy.deepcopy(lab["nodes"][0]), "names": "nid[007-008]", "addresses": "198.18.1.[6-7]"})
    line = one(lab, "nodes[1].addresses")
    assert "198.18.1.6 (nid007) is also the address of nid006 (nodes[0].addresses)" in line
    assert "give each host its own address" in line


def test_many_duplicates_are_one_line_per_pair_of_keys(lab):
    lab["nodes"][0].update(names="nid[001-004]", addresses="198.18.1.[1-4]")
    lab["nodes"].append({**copy.deepcopy(lab["nodes"][0]), "names": "nid[005-008]", "addresses": "198.18.1.[1-4]"})
    line = one(lab, "nodes[1].addresses")
    assert "198.18.1.1 (nid005) is also the address of nid001 (nodes[0].addresses), and 3 more" in line


def test_duplicate_address_within_a_group(lab):
    lab["nodes"][0]["addresses"] = "198.18.1.[1-7],198.18.1.2"
    assert "198.18.1.2 (nid008) is also the address of nid002 (nodes[0].addresses)" in one(lab, "nodes[0].addresses")


def test_controller_address_of_a_node_names_both(lab):
    vc(lab, "bristen")["controller"]["address"] = "198.18.1.3"
    line = one(lab, "platforms.ml.vclusters.bristen.controller.address")
    assert "198.18.1.3 (controller bristen-ctl) is also the address of nid003 (nodes[0].addresses)" in line


def test_two_controllers_on_one_address_names_both(lab):
    vc(lab, "eiger")["controller"]["address"] = "198.18.0.11"
    line = one(lab, "platforms.hpc.vclusters.eiger.controller.address")
    assert ("198.18.0.11 (controller eiger-ctl) is also the address of controller clariden-ctl "
            "(platforms.ml.vclusters.clariden.controller.address)") in line


def test_controller_host_named_like_a_node(lab):
    vc(lab, "eiger")["controller"]["host"] = "nid004"
    line = one(lab, "platforms.hpc.vclusters.eiger.controller.host")
    assert "nid004 is also a node (nodes[0].names)" in line and "give it another name" in line


def test_two_vclusters_sharing_a_controller_host(lab):
    vc(lab, "bristen")["controller"]["host"] = "clariden-ctl"
    line = one(lab, "platforms.ml.vclusters.bristen.controller.host")
    assert "clariden-ctl is also the controller of vCluster clariden" in line


def test_controller_host_must_be_a_host_name(lab):
    vc(lab, "bristen")["controller"]["host"] = "Bristen_ctl"
    assert "fix the value" in one(lab, "platforms.ml.vclusters.bristen.controller.host")


def test_every_problem_is_listed_at_once(lab):
    del lab["reboot"]
    del vc(lab, "eiger")["controller"]
    lab["nodes"][0]["addresses"] = "198.18.1.[1-7]"
    vc(lab, "bristen")["controller"]["host"] = "clariden-ctl"
    keys = [ln.split(": ")[1] for ln in problems(lab)]
    assert sorted(keys) == sorted(["nodes[0].addresses", "platforms.hpc.vclusters.eiger.controller",
                                   "platforms.ml.vclusters.bristen.controller.host", "reboot"])


# ---- driver: local refuses what only the ssh driver uses ----

@pytest.mark.parametrize("where,key", [
    (lambda d: d["nodes"][0].update(addresses="198.18.1.[1-8]"), "nodes[0].addresses"),
    (lambda d: vc(d, "bristen").update(controller={"host": "b-ctl", "address": "198.18.0.2"}),
     "platforms.ml.vclusters.bristen.controller"),
    (lambda d: d.update(ssh={"user": "root"}), "ssh"),
    (lambda d: d.update(reboot={"command": "boot {node}"}), "reboot"),
])
def test_local_driver_refuses_what_belongs_to_the_ssh_driver(local, where, key):
    where(local)
    line = one(local, key)
    assert "belongs to driver: ssh" in line and "remove it, or set driver: ssh" in line


# ---- the SSH files: checked at `up` (check_ssh_files), never while loading ----

def test_loading_does_not_read_the_ssh_files(lab):
    lab["ssh"].update(key="/nonexistent/id", known_hosts="/nonexistent/kh")
    assert parse_site(lab, "x.yaml").ssh.key == "/nonexistent/id"


def test_check_ssh_files_names_each_missing_file_with_a_fix(lab, tmp_path):
    s = parse_site(lab, "x.yaml")
    layout = Layout.of(s, tmp_path)
    lines = check_ssh_files(s, layout)
    assert lines == [
        f"ssh.key (default): {layout.ssh_key} does not exist; create it (ssh-keygen -t ed25519 -N '' -f "
        f"{layout.ssh_key}), or set ssh.key to the file to use",
        f"ssh.known_hosts (default): {layout.known_hosts} does not exist; write every host's key into it "
        f"(ssh-keyscan -H ADDRESS >> {layout.known_hosts}, checking each key), "
        "or set ssh.known_hosts to the file to use",
    ]
    assert "x.yaml: ssh.key (default): " in str(SiteError("x.yaml", lines))  # what the driver raises: exit 2


def test_check_ssh_files_refuses_an_open_key_and_a_folder(lab, tmp_path):
    key, kh = tmp_path / "id", tmp_path / "kh"
    key.write_text("k")
    key.chmod(0o644)
    kh.mkdir()
    lab["ssh"].update(key=str(key), known_hosts=str(kh))
    s = parse_site(lab, "x.yaml")
    assert check_ssh_files(s, Layout.of(s, tmp_path)) == [
        f"ssh.key: {key} is open to group or others (mode 0644), and ssh refuses such a key; chmod 600 {key}",
        f"ssh.known_hosts: {kh} is not a regular file; set ssh.known_hosts to the file to use",
    ]
    key.chmod(0o600)
    kh.rmdir()
    kh.write_text("")
    assert check_ssh_files(s, Layout.of(s, tmp_path)) == []


# ---- the command line ----

def _strata(*args, state: Path):
    return subprocess.run([sys.executable, "-m", "strata.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={"STRATA_STATE": str(state), "PATH": "/usr/bin:/bin"})


def test_plan_of_the_lab_shows_its_moves_and_writes_nothing(tmp_path):
    r = _strata("plan", "--site", str(LAB), state=tmp_path / "state")
    assert r.returncode == 0, r.stderr
    assert "nid001: free pool -> clariden" in r.stdout and "nid008: free pool -> bristen" in r.stdout
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["up", "apply", "down"])
def test_ssh_site_is_refused_until_the_ssh_driver_is_wired(tmp_path, command):
    r = _strata(command, "--site", str(LAB), state=tmp_path / "state")
    assert r.returncode == 1
    assert "error: the ssh driver cannot yet start a site: " in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


def test_bad_ssh_site_exits_2_naming_the_key(tmp_path, lab):
    lab["reboot"]["command"] = "boot {image}"
    bad = tmp_path / "lab.yaml"
    bad.write_text(yaml.safe_dump(lab))
    r = _strata("plan", "--site", str(bad), state=tmp_path / "state")
    assert r.returncode == 2 and f"{bad}: reboot.command: " in r.stderr and "Traceback" not in r.stderr
