"""Who may use which vCluster, on the real local site: `access.groups` closes a vCluster's munge socket (and
its partitions, `AllowGroups=`) to all but its groups' members and root; strata's commands say so in one line.

Real users and groups, made for this module and removed after it: user U in group A. vCluster alpha allows
A and C (two groups: an ACL on its munge folder), beta allows B (one group: the folder's group), gamma sets
nothing (open to every local user, as before).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import SiteUnderTest, require_slurm
from tests.e2e.test_containers import user_python

pytestmark = pytest.mark.e2e

RUN = uuid.uuid4().hex[:6]
GROUP_A, GROUP_B, GROUP_C = (f"strata-e2e-{RUN}-{x}" for x in "abc")
USER = f"strata-e2e-{RUN}-u"


def _cmd(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def acs():
    """The site, up, with its state open to other users (as /var/lib/strata is), and user U."""
    require_slurm()
    base = Path(tempfile.mkdtemp(prefix="strata-e2e-access-", dir="/tmp"))  # open to U, unlike pytest's tmp
    made: list[tuple[str, str]] = []
    s = None
    try:
        base.chmod(0o755)
        for g in (GROUP_A, GROUP_B, GROUP_C):
            _cmd("groupadd", g)
            made.append(("groupdel", g))
        _cmd("useradd", "--no-create-home", "--no-user-group", "--gid", "nogroup", "--groups", GROUP_A,
             "--shell", "/usr/sbin/nologin", USER)
        made.append(("userdel", USER))
        s = SiteUnderTest(base)
        vcs = s.data["platforms"]["ml"]["vclusters"]
        vcs["alpha"]["access"] = {"groups": [GROUP_A, GROUP_C]}
        vcs["beta"]["access"] = {"groups": [GROUP_B]}
        s.write()
        s.home = base / "home"
        s.home.mkdir()
        shutil.chown(s.home, USER, "nogroup")
        s.state.chmod(0o755)
        s.strata("up")
        yield s
    finally:
        if s is not None:
            s.down()
        for what, name in reversed(made):
            subprocess.run([what, name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def as_user(acs, *args: str, groups: str | None = None, vcluster: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run args as U: its own groups from /etc/group, or exactly `groups` (process groups only)."""
    who = ["--init-groups"] if groups is None else [f"--groups={groups}"]
    env = {"PATH": os.environ["PATH"], "HOME": str(acs.home), "STRATA_STATE": str(acs.state)}
    if vcluster:
        env["SLURM_CONF"] = str(acs.conf(vcluster))
    return subprocess.run(["setpriv", f"--reuid={USER}", "--regid=nogroup", *who, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=acs.home, env=env)


def _gid(group: str) -> str:
    return subprocess.run(["getent", "group", group], capture_output=True, text=True).stdout.split(":")[2]


def test_a_member_submits_to_their_vcluster(acs):
    out = acs.home / "member.out"
    r = as_user(acs, "sbatch", "--parsable", "-w", "nid001", "-o", str(out), "--wrap", "id -un; id -Gn",
                vcluster="alpha")
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    assert acs.wait_job("alpha", job, ("COMPLETED", "FAILED"))["JobState"] == "COMPLETED", out.read_text()
    assert out.read_text().split() == [USER, "nogroup", GROUP_A]


def test_another_vcluster_refuses_them_at_its_munge_socket(acs):
    sock = acs.root / "vclusters" / "beta" / "munge" / "munge.sock"
    start = time.monotonic()
    r = as_user(acs, "sbatch", "--wrap", "true", vcluster="beta")
    took = time.monotonic() - start
    assert r.returncode != 0 and not r.stdout
    # what the user reads from Slurm: munge's own words, then the submission's failure
    assert f'Failed to access "{sock}": Permission denied' in r.stderr, r.stderr
    assert "Batch job submission failed: Protocol authentication error" in r.stderr, r.stderr
    assert took < 10, f"sbatch took {took:.0f}s to give up"  # Slurm retries munge for ~2 s
    assert as_user(acs, "squeue", vcluster="beta").returncode != 0
    acs.slurm("beta", "sinfo")  # root still may
    assert as_user(acs, "sinfo", "-h", vcluster="gamma").returncode == 0  # no access key: open to everyone


def test_slurm_refuses_them_too_where_munge_would_not(acs):
    """The second lock: with B as a process group (so beta's munge socket lets them in) but not a member of
    B in the group database, beta's controller refuses the job by its partitions' AllowGroups."""
    r = as_user(acs, "sbatch", "--wrap", "true", groups=_gid(GROUP_B), vcluster="beta")
    assert r.returncode != 0 and "User's group not permitted to use this partition" in r.stderr, r.stderr


def test_strata_commands_refuse_in_one_line_with_the_fix(acs):
    python = user_python(acs.home / "venv")
    strata = (str(python), "-m", "strata.cli")
    site = ("--site", str(acs.file))
    msg = (f"error: vCluster beta is open to members of {GROUP_B} only (platforms.ml.vclusters.beta.access.groups "
           f"in {acs.file}), and you ({USER}) are in none of them; ask an admin to add you to group {GROUP_B}, "
           "then log in again\n")
    for args in (("env", "beta"), ("run", "--vcluster", "beta", "--environment=x", *site, "--", "true"),
                 ("train", "--vcluster", "beta", "--wait")):
        r = as_user(acs, *strata, *args, *site)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", msg), args
    r = as_user(acs, *strata, "env", "alpha", *site)
    assert (r.returncode, r.stdout) == (0, f"export SLURM_CONF={acs.conf('alpha')}\n"), r.stderr


def test_access_set_on_a_running_site_closes_it_at_the_next_up(acs):
    gamma = acs.data["platforms"]["hpc"]["vclusters"]["gamma"]
    munge = acs.root / "vclusters" / "gamma" / "munge"
    try:
        gamma["access"] = {"groups": [f"strata-e2e-{RUN}-missing"]}
        acs.write()
        r = acs.strata("up", check=False)
        assert r.returncode == 2 and (f"{acs.file}: platforms.hpc.vclusters.gamma.access.groups: group "
                                      f"'strata-e2e-{RUN}-missing' does not exist on this host; create it") in r.stderr
        assert "AllowGroups" not in acs.conf("gamma").read_text()  # nothing written that names it
        gamma["access"] = {"groups": [GROUP_C]}
        acs.write()
        acs.strata("up")
        assert (munge.stat().st_gid, munge.stat().st_mode & 0o777) == (int(_gid(GROUP_C)), 0o750)
        assert f"AllowGroups={GROUP_C} State=UP" in acs.conf("gamma").read_text()
        r = as_user(acs, "sinfo", vcluster="gamma")
        assert r.returncode != 0 and "Permission denied" in r.stderr
        acs.slurm("gamma", "sinfo")  # the restarted controller answers root
    finally:
        gamma.pop("access", None)
        acs.write()
        acs.strata("up")
    assert as_user(acs, "sinfo", "-h", vcluster="gamma").returncode == 0  # open again
    assert munge.stat().st_mode & 0o777 == 0o755


def test_a_missing_group_stops_a_fresh_up_with_the_key_that_names_it(tmp_path):
    require_slurm()
    s = SiteUnderTest(tmp_path)
    s.data["platforms"]["ml"]["vclusters"]["alpha"]["access"] = {"groups": [f"strata-e2e-{RUN}-missing"]}
    s.write()
    try:
        r = s.strata("up", check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert (f"{s.file}: platforms.ml.vclusters.alpha.access.groups: group 'strata-e2e-{RUN}-missing' does "
                "not exist on this host; create it") in r.stderr, r.stderr
        assert not s.conf("alpha").exists() and not list(s.root.rglob("*.pid"))  # nothing rendered or started
    finally:
        s.down()
