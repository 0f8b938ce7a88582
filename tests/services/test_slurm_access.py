"""Who may use a vCluster: the site file's access.groups, the munge socket folder it closes, AllowGroups, and
the one-line refusal of strata's own commands."""

from __future__ import annotations

import grp
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from vocab.site import SiteError, parse_site
from vocab.layout import Layout
from iac.slurm_inputs import slurm_cluster
from services.slurm.access import AccessError, acl_groups, group_ids, refusal, restrict_dir
from services.slurm.daemons import Munged
from services.slurm.render import render_slurm_conf

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
NOBODY = 65534


def local_site_with(access: dict | None, vcluster: str = "clariden"):
    data = yaml.safe_load((REPO / "sites/local.yaml").read_text())
    if access is not None:
        data["platforms"]["ml"]["vclusters"][vcluster]["access"] = access
    return parse_site(data, "sites/local.yaml")


def two_groups() -> tuple[grp.struct_group, grp.struct_group]:
    """Two groups every Debian host has (nobody is in neither); tests only read their gids."""
    return grp.getgrnam("users"), grp.getgrnam("ssl-cert" if _has("ssl-cert") else "staff")


def _has(group: str) -> bool:
    try:
        grp.getgrnam(group)
        return True
    except KeyError:
        return False


# ---- the site file ----

def test_access_is_optional_and_unset_means_open_to_everyone():
    site = local_site_with(None)
    assert all(vc.access is None for vc in site.vclusters.values())
    site = local_site_with({"groups": ["ml-users", "ml-admins"]})
    assert site.vclusters["clariden"].access.groups == ("ml-users", "ml-admins")
    assert site.vclusters["bristen"].access is None


@pytest.mark.parametrize("access,why", [
    ({"groups": []}, r"clariden\.access\.groups: no groups named: that would leave the vCluster to root alone"),
    ({"groups": ["ml-users,ml-admins"]}, r"access\.groups: 'ml-users,ml-admins' is not a Unix group name; "
                                          r"list each group as its own item"),
    ({"groups": ["a", "a"]}, r"access\.groups: groups repeat"),
    ({"grups": ["a"]}, r"access\.grups: unknown key 'grups'; did you mean 'groups'\?"),
    ({}, r"access\.groups: required key is missing"),
])
def test_access_is_validated_when_the_site_file_loads(access, why):
    with pytest.raises(SiteError, match=why):
        local_site_with(access)


def test_a_misspelt_access_key_suggests_it():
    data = yaml.safe_load((REPO / "sites/local.yaml").read_text())
    data["platforms"]["ml"]["vclusters"]["clariden"]["acess"] = {"groups": ["a"]}
    with pytest.raises(SiteError, match="did you mean 'access'"):
        parse_site(data, "f.yaml")


def test_loading_does_not_look_groups_up_on_this_host():
    """Loading stays pure: a group of the site's real hosts need not exist where the file is validated."""
    assert local_site_with({"groups": ["no-such-group-here"]}).vclusters["clariden"].access


# ---- slurm.conf ----

def test_partitions_allow_the_access_groups_only(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-host")
    site = local_site_with({"groups": ["ml-users", "ml-admins"]})
    c = slurm_cluster(site, Layout.of(site, Path("/var/lib/strata")), "clariden", [f"nid{i:03d}" for i in range(1, 7)])
    text = render_slurm_conf(c.__class__(**{**c.__dict__, "source": "sites/local.yaml"}))
    golden = GOLDEN / "clariden-access.slurm.conf"
    if os.environ.get("STRATA_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "differs from its golden copy (STRATA_UPDATE_GOLDEN=1 to accept)"
    assert ("PartitionName=debug Nodes=nid[001-006] Default=NO MaxTime=00:30:00 AllowGroups=ml-admins,ml-users "
            "State=UP") in text
    # the other vClusters are left open, and render as they always did
    bristen = render_slurm_conf(slurm_cluster(site, Layout.of(site, Path("/var/lib/strata")), "bristen", ["nid007"]))
    assert "AllowGroups" not in bristen and "access.groups" not in bristen


# ---- the munge socket's folder ----

def can_enter(path: Path, gid: int) -> bool:
    """Whether nobody, with `gid` as its only group, may search `path` (the kernel decides, ACLs included)."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups", "test", "-x", str(path)]
                          ).returncode == 0


@pytest.fixture
def folder():
    """A folder nobody could search but for its mode (pytest's tmp dirs lie below a 0700 one)."""
    if os.geteuid() != 0:
        pytest.skip("changing a folder's group needs root")
    base = Path(tempfile.mkdtemp(prefix="strata-access-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "munge").mkdir()
        yield base / "munge"
    finally:
        shutil.rmtree(base)


def test_one_group_owns_the_folder_with_mode_0750(folder):
    a, b = two_groups()
    restrict_dir(folder, (a.gr_gid,))
    st = folder.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, a.gr_gid, 0o750) and acl_groups(folder) == ()
    assert can_enter(folder, a.gr_gid) and not can_enter(folder, b.gr_gid) and not can_enter(folder, NOBODY)


def test_several_groups_get_an_acl_and_unset_opens_the_folder_again(folder):
    a, b = two_groups()
    restrict_dir(folder, (b.gr_gid, a.gr_gid))
    st = folder.stat()
    assert (st.st_gid, st.st_mode & 0o777) == (0, 0o750)
    assert acl_groups(folder) == tuple(sorted((a.gr_gid, b.gr_gid)))
    assert can_enter(folder, a.gr_gid) and can_enter(folder, b.gr_gid) and not can_enter(folder, NOBODY)
    assert not can_enter(folder, 0)  # the owning group (root) has no access of its own: the ACL says so
    restrict_dir(folder, None)
    st = folder.stat()
    assert (st.st_gid, st.st_mode & 0o777) == (0, 0o755) and acl_groups(folder) == ()
    assert can_enter(folder, NOBODY)


def test_a_group_missing_on_the_host_stops_munged_before_it_starts(tmp_path):
    m = Munged(tmp_path / "munge", "vCluster clariden", ("strata-no-such-group",), "sites/x.yaml",
               "platforms.ml.vclusters.clariden.access.groups")
    with pytest.raises(AccessError, match=r"^sites/x\.yaml: platforms\.ml\.vclusters\.clariden\.access\.groups: "
                                          r"group 'strata-no-such-group' does not exist on this host; create it "
                                          r"\(`groupadd strata-no-such-group`"):
        m.start()
    assert not (tmp_path / "munge").exists()
    a, _ = two_groups()
    assert group_ids(("users",), "f.yaml", "k") == (a.gr_gid,)


# ---- strata's own refusal ----

def test_refusal_names_the_vcluster_its_groups_and_the_fix():
    a, b = two_groups()
    site = local_site_with({"groups": [a.gr_name, b.gr_name]})
    why = refusal(site, "clariden", uid=NOBODY, gids={NOBODY})
    assert why == (f"vCluster clariden is open to members of {a.gr_name}, {b.gr_name} only "
                   "(platforms.ml.vclusters.clariden.access.groups in sites/local.yaml), and you (nobody) are in none "
                   f"of them; ask an admin to add you to one of the groups {a.gr_name}, {b.gr_name}, then log in again")
    assert "\n" not in why
    assert refusal(site, "clariden", uid=NOBODY, gids={NOBODY, b.gr_gid}) is None  # a member
    assert refusal(site, "clariden", uid=0, gids={0}) is None  # root
    assert refusal(site, "bristen", uid=NOBODY, gids={NOBODY}) is None  # open: no access key
    one = local_site_with({"groups": [a.gr_name]})
    why = refusal(one, "clariden", uid=NOBODY, gids={NOBODY})
    assert why.endswith(f"add you to group {a.gr_name}, then log in again")
