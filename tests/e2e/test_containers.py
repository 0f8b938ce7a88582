"""User environments on the real local site: EDFs run as real runc containers, hooks, policy, srun --environment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import SiteUnderTest, require_slurm
from user_envs.images import GLIBC_DIR, build_image, trainer_edf, trainer_mounts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HOOK_LIB = f"{GLIBC_DIR}/libz.so.1"  # stands for the network stack's libraries
USER_1000 = ("unshare", "--user", "--map-user=1000", "--map-group=1000")


class ContainerSite(SiteUnderTest):
    def run(self, edf: str, *cmd: str, check: bool = True, _prefix: tuple[str, ...] = (),
            **env) -> subprocess.CompletedProcess:
        r = subprocess.run([*_prefix, sys.executable, "-m", "strata.cli", "run", "--vcluster", "alpha", "--site",
                            str(self.file), f"--environment={edf}", "--", *cmd], capture_output=True, text=True,
                           env=self.env(EDF_PATH=str(self.edf_dir), **env), timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"strata run {edf} {cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def run_as_user(self, edf: str, *cmd: str, check: bool = True, **env) -> subprocess.CompletedProcess:
        """`strata run` as uid/gid 1000 without root: `unshare --user` maps this root to 1000 and leaves it no
        capabilities on the host (a real user cannot start this venv's Python: it lives under /root, 0700)."""
        return self.run(edf, *cmd, check=check, _prefix=USER_1000, **{"STRATA_USER_DIR": str(self.user_dir), **env})

    def cli(self, *args: str, site: bool = True, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "strata.cli", *args, *(["--site", str(self.file)] if site else [])],
                              capture_output=True, text=True, env=self.env(EDF_PATH=str(self.edf_dir), **env),
                              timeout=240)

    def edf(self, name: str, text: str) -> None:
        (self.edf_dir / f"{name}.toml").write_text(text)


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    require_slurm()
    tmp = tmp_path_factory.mktemp("containers")
    s = ContainerSite(tmp)
    alpha = s.data["platforms"]["ml"]["vclusters"]["alpha"]
    alpha["vservices"] = ["slurm", "container-engine"]
    alpha["container_engine"] = {
        "mount_allowlist": [str(tmp / "scratch"), str(tmp / "trainer.sqsh"), *trainer_mounts(tmp / "scratch" / "runs")],
        "hooks": {"aws_ofi_nccl": {"libraries": [HOOK_LIB]}},
    }
    s.write()
    s.edf_dir = tmp / "edf"
    s.edf_dir.mkdir()
    s.user_dir = tmp / "user1000"  # STRATA_USER_DIR of the rootless runs
    (tmp / "scratch").mkdir()
    s.image = build_image("busybox", tmp / "busybox.sqsh")
    s.trainer_image = build_image("trainer-base", tmp / "trainer.sqsh")
    try:
        s.strata("up")
        r = s.cli("engine", "install", "alpha")
        assert r.returncode == 0, r.stderr
        yield s
    finally:
        s.down()


def test_run_honours_workdir_env_mounts_and_user(cs):
    scratch = cs.tmp / "scratch"
    (scratch / "in.txt").write_text("from the host\n")
    cs.edf("base", f'image = "{cs.image}"\n[env]\nFROM_BASE = "1"\nDROP_ME = "x"\n')
    cs.edf("app", f'base_environment = "base"\nworkdir = "/data"\nmounts = ["{scratch}:/data:ro"]\n'
                  '[env]\nGREETING = "hi ${USER}"\nDROP_ME = ""\n')
    r = cs.run("app", "sh", "-c", 'id -u; id -g; pwd; cat in.txt; echo "$GREETING $FROM_BASE ${DROP_ME:-unset}"; '
                                 'grep CapEff /proc/self/status; touch /data/x 2>/dev/null || echo ro-mount; exit 3',
               check=False, USER="alice", SUDO_UID="1234", SUDO_GID="4321")
    assert r.returncode == 3, r.stderr
    assert r.stdout.split("\n") == ["1234", "4321", "/data", "from the host", "hi alice 1 unset",
                                    "CapEff:\t0000000000000000", "ro-mount", ""]


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_writable_root_is_thrown_away_and_readonly_when_not_writable(cs, rootless):
    if rootless:
        require_userns()
    run = cs.run_as_user if rootless else cs.run
    cs.edf("rw", f'image = "{cs.image}"\n')
    cs.edf("ro", f'image = "{cs.image}"\nwritable = false\n')
    assert run("rw", "sh", "-c", "touch /made && echo made").stdout == "made\n"
    assert run("rw", "sh", "-c", "test -e /made && echo kept || echo gone").stdout == "gone\n"
    r = run("ro", "touch", "/made", check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr


def test_entrypoint_runs_when_asked(cs):
    cs.edf("ep", f'image = "{cs.image}"\nentrypoint = true\n')
    cs.edf("noep", f'image = "{cs.image}"\n')
    assert cs.run("ep", "echo", "cmd").stdout == "entrypoint ran\ncmd\n"
    assert cs.run("noep", "echo", "cmd").stdout == "cmd\n"


def test_sqsh_mount_binds_a_squashfs_image_read_only(cs):
    cs.edf("sq", f'image = "{cs.image}"\nmounts = ["{cs.trainer_image}:/opt/tools:sqsh"]\n')
    r = cs.run("sq", "sh", "-c", "readlink /opt/tools/lib; touch /opt/tools/x 2>/dev/null || echo ro")
    assert r.stdout == "usr/lib\nro\n"


def test_empty_image_runs_on_the_host(cs):
    cs.edf("host", 'image = ""\n[env]\nX = "y"\n')
    r = cs.run("host", "sh", "-c", f"echo $X; test -d {cs.root} && echo host-fs")
    assert r.stdout == "y\nhost-fs\n"


def test_canonical_cscs_ml_edf_runs_with_a_local_image(cs):
    scratch = cs.tmp / "scratch" / "alice"
    scratch.mkdir(exist_ok=True)
    cs.edf("pytorch", f'image = "{cs.image}"\n'
                      f'mounts = ["{cs.tmp}/scratch/${{USER}}:/capstor/scratch/cscs/${{USER}}"]\n'
                      'workdir = "/capstor/scratch/cscs/${USER}"\n\n[annotations]\n'
                      'com.hooks.aws_ofi_nccl.enabled = "true"\ncom.hooks.aws_ofi_nccl.variant = "cuda12"\n')
    r = cs.run("pytorch", "sh", "-c", "pwd; ls /opt/strata/hooks/aws_ofi_nccl/lib; echo $LD_LIBRARY_PATH; "
                                      "cat /etc/ld.so.conf.d/strata-aws_ofi_nccl.conf; touch out", USER="alice")
    assert r.stdout.split("\n")[:4] == ["/capstor/scratch/cscs/alice", "libz.so.1",
                                        "/opt/strata/hooks/aws_ofi_nccl/lib", "/opt/strata/hooks/aws_ofi_nccl/lib"]
    assert (scratch / "out").exists()
    shown = cs.cli("edf", "show", "pytorch", site=False, USER="alice")
    assert shown.returncode == 0 and '"com.hooks.aws_ofi_nccl.variant" = "cuda12"' in shown.stdout


@pytest.mark.parametrize("mounts,annotations,image,why", [
    (["/etc/munge:/m"], "", None, "containers may never mount"),
    (["{state}/vclusters/beta/munge:/m"], "", None, "containers may never mount"),
    (["{state}/..:/m"], "", None, "contains"),  # the state dir's parent holds every vCluster's munge key
    (["/var:/v"], "", None, "contains /var/lib/munge"),
    (["/usr:/u"], "", None, "is outside the paths vCluster alpha allows"),
    ([], 'com.hooks.cxi.enabled = "true"', None, "does not offer the hook 'cxi'"),
    ([], "", "nvcr.io#nvidia/pytorch:24.01-py3", "registry image"),
])
def test_policy_refuses_with_a_clear_error(cs, mounts, annotations, image, why):
    ms = ", ".join(f'"{m.format(state=cs.root)}"' for m in mounts)
    cs.edf("bad", f'image = "{image or cs.image}"\nmounts = [{ms}]\n[annotations]\n{annotations}\n')
    r = cs.run("bad", "true", check=False)
    assert r.returncode == 2 and why in r.stderr and "bad.toml" in r.stderr, r.stderr


def test_container_sees_no_munge_socket_and_no_site_state(cs):
    cs.edf("plain", f'image = "{cs.image}"\nmounts = ["{cs.tmp}/scratch:/scratch"]\n')
    munged = (cs.root / "vclusters" / "beta" / "munge" / "munged.pid").read_text().strip()
    sock = cs.root / "vclusters" / "beta" / "munge" / "munge.sock"
    # not by path, and not through the (shared) /proc either: no CAP_SYS_PTRACE, so /proc/PID/root is closed
    r = cs.run("plain", "sh", "-c", f"test -e {cs.root} && echo state-visible; find / -name 'munge*' 2>/dev/null; "
                                    f"test -e /proc/{munged}/root{sock} && echo via-proc; echo done")
    assert r.stdout == "done\n"


def test_bundle_is_cached_by_image_digest(cs):
    cs.edf("plain2", f'image = "{cs.image}"\n')
    cs.run("plain2", "true")
    digest = hashlib.sha256(cs.image.read_bytes()).hexdigest()
    rootfs = cs.root / "container-engine" / "images" / digest / "rootfs"
    before = rootfs.stat().st_mtime_ns
    cs.run("plain2", "true")
    assert rootfs.is_dir() and rootfs.stat().st_mtime_ns == before
    assert not any((cs.root / "container-engine" / "runs").iterdir())  # per-run bundles are removed


def test_vservices_say_how_to_reach_each(cs):
    r = cs.cli("vservices", "alpha")
    assert r.returncode == 0
    assert f"SLURM_CONF={cs.conf('alpha')}" in r.stdout and "srun --environment=NAME" in r.stdout
    assert "container-engine" not in cs.cli("vservices", "beta").stdout


def srun(cs, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["srun", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SLURM_CONF": str(cs.conf("alpha")), "EDF_PATH": str(cs.edf_dir)})


def test_srun_environment_runs_tasks_in_containers_with_hooks(cs):
    cs.edf("nccl", f'image = "{cs.image}"\n[annotations]\ncom.hooks.aws_ofi_nccl.enabled = "true"\n')
    r = srun(cs, "-N2", "-C", "thp_never", "--environment=nccl", "sh", "-c",
             'echo "$SLURM_PROCID $SLURMD_NODENAME $(ls /opt/strata/hooks/aws_ofi_nccl/lib) $(ls /dev | grep -c nvidia)"')
    assert r.returncode == 0, r.stderr
    # the GPU hook bound the node root's 4 /dev/nvidia* (+ nvidiactl etc. if present)
    lines = sorted(r.stdout.split("\n")[:-1])
    assert [ln.split()[:3] for ln in lines] == [["0", "nid001", "libz.so.1"], ["1", "nid002", "libz.so.1"]]
    assert all(int(ln.split()[3]) >= 4 for ln in lines)
    bad = srun(cs, "-N1", "--environment=nosuch", "true")
    assert bad.returncode != 0 and "no environment 'nosuch'" in bad.stderr


def test_sbatch_environment_runs_the_steps_in_containers_and_the_script_on_the_host(cs):
    cs.edf("steps", f'image = "{cs.image}"\n')
    out = cs.tmp / "batch.out"
    job = subprocess.run(["sbatch", "--parsable", "-N2", "--environment=steps", "-o", str(out), "--wrap",
                          f"test -d {cs.root} && echo script-on-host; "
                          f"srun -N2 sh -c 'test -d {cs.root} || echo step-in-container'"],
                         capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "SLURM_CONF": str(cs.conf("alpha")), "EDF_PATH": str(cs.edf_dir)}).stdout.strip()
    assert cs.wait_job("alpha", job, ("COMPLETED", "FAILED"))["JobState"] == "COMPLETED", out.read_text()
    assert sorted(out.read_text().split()) == ["script-on-host", "step-in-container", "step-in-container"]


def test_srun_trainer_tiny_on_two_nodes_in_containers(cs):
    runs = cs.tmp / "scratch" / "runs"
    runs.mkdir()
    cs.edf("trainer", trainer_edf(cs.trainer_image, runs))
    r = srun(cs, "-N2", "--environment=trainer", "sh", "-c",
             "test -e /etc/munge && exit 9; exec python -m workloads.trainer.train --config tiny "
             "--training.max_steps=3 --job.run_dir=/runs/tiny", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 3/3" in r.stdout + r.stderr and "weights agree across 2 ranks" in r.stdout + r.stderr
    assert any((runs / "tiny").iterdir())


def test_strata_train_with_an_environment_trains_in_containers_on_two_nodes(cs):
    """The researcher's path: `strata train --environment` renders #SBATCH --environment, the tasks run
    the container's python with the run dir as mounted there; metrics land in the host run dir."""
    runs = cs.tmp / "scratch" / "runs"
    runs.mkdir(exist_ok=True)
    cs.edf("trainer", trainer_edf(cs.trainer_image, runs))
    r = cs.cli("train", "--vcluster", "alpha", "--nodes", "2", "--environment", "trainer",
               "--run-dir", str(runs / "edf-tiny"), "--wait", "--training.max_steps=3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COMPLETED" in r.stdout and "steps 1..3: loss" in r.stdout, r.stdout
    script = (runs / "edf-tiny" / "job.sbatch").read_text()
    assert "#SBATCH --environment=trainer" in script and "--job.run_dir=/runs/edf-tiny" in script
    assert "weights agree across 2 ranks" in next((runs / "edf-tiny").glob("slurm-*.out")).read_text()
    # a run dir the container cannot write is refused before anything is submitted
    bad = cs.cli("train", "--vcluster", "alpha", "--environment", "trainer", "--run-dir", str(cs.tmp / "elsewhere"))
    assert bad.returncode == 2 and "is not in a writable mount of EDF 'trainer'" in bad.stderr, bad.stderr
    assert not (cs.tmp / "elsewhere").exists()


# ---- rootless: a caller who is not root ------------------------------------------------------------

def require_userns():
    r = subprocess.run([*USER_1000, "true"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"`unshare --user` fails on this machine ({r.stderr.strip()}): cannot run as a user who is not root")


def test_rootless_runs_as_the_caller_with_their_files_and_allowlisted_binds(cs):
    require_userns()
    data = cs.tmp / "scratch" / "rootless"
    data.mkdir()
    (data / "in.txt").write_text("mine\n")
    cs.edf("rl", f'image = "{cs.image}"\nworkdir = "/data"\nmounts = ["{data}:/data"]\n[env]\nX = "y"\n')
    r = cs.run_as_user("rl", "sh", "-c", "id -u; id -g; cat in.txt; stat -c %u in.txt; echo $X; "
                                         "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; "
                                         "touch out; exit 3", check=False)
    assert r.returncode == 3, r.stderr
    assert r.stdout.split("\n") == ["1000", "1000", "mine", "1000", "y", "CapEff:\t0000000000000000",
                                    "NoNewPrivs:\t1", ""]
    assert (data / "out").exists()  # written through the bind, as the caller (host uid 0 behind the test's 1000)


@pytest.mark.parametrize("mount,why", [
    ("/etc/munge:/m", "containers may never mount"),
    ("{state}/vclusters/beta/munge:/m", "containers may never mount"),
    ("{state}/..:/m", "contains"),
    ("/usr:/u", "is outside the paths vCluster alpha allows"),
])
def test_rootless_policy_is_the_same(cs, mount, why):
    require_userns()
    cs.edf("rlbad", f'image = "{cs.image}"\nmounts = ["{mount.format(state=cs.root)}"]\n')
    r = cs.run_as_user("rlbad", "true", check=False)
    assert r.returncode == 2 and why in r.stderr and "rlbad.toml" in r.stderr, r.stderr


def test_rootless_hooks_and_sqsh_mounts(cs):
    require_userns()
    cs.edf("rlnccl", f'image = "{cs.image}"\nmounts = ["{cs.trainer_image}:/opt/tools:sqsh"]\n'
                     '[annotations]\ncom.hooks.aws_ofi_nccl.enabled = "true"\n')
    # SLURMD_NODENAME: the GPU hook takes nid001's node root, whose dev/nvidia* it binds, as in a task there
    r = cs.run_as_user("rlnccl", "sh", "-c", "ls /opt/strata/hooks/aws_ofi_nccl/lib; echo $LD_LIBRARY_PATH; "
                                             "readlink /opt/tools/lib; ls /dev | grep -c nvidia", SLURMD_NODENAME="nid001")
    assert r.stdout.split("\n")[:3] == ["libz.so.1", "/opt/strata/hooks/aws_ofi_nccl/lib", "usr/lib"], r.stderr
    assert int(r.stdout.split("\n")[3]) >= 4
    assert any((cs.user_dir / "images").glob("*/rootfs/usr/lib"))  # the sqsh mount unpacked in the user's cache


def test_rootless_mounts_nothing_on_the_host_and_reuses_the_users_cache(cs):
    require_userns()
    cs.edf("rlcache", f'image = "{cs.image}"\n')
    cs.run_as_user("rlcache", "true")
    digest = hashlib.sha256(cs.image.read_bytes()).hexdigest()
    rootfs = cs.user_dir / "images" / digest / "rootfs"
    before = rootfs.stat().st_mtime_ns
    r = cs.run_as_user("rlcache", "sh", "-c", "grep -c ' /dev/shm ' /proc/self/mountinfo")
    assert r.stdout == "1\n"  # the container has its mounts...
    assert rootfs.stat().st_mtime_ns == before  # ...from the user's cache, unpacked once
    assert oct(cs.user_dir.stat().st_mode & 0o777) == "0o700"
    assert not any((cs.user_dir / "runs").iterdir())  # run dirs removed
    assert not any((cs.user_dir / "runc" / "alpha").iterdir())  # runc's state removed
    mounted = Path("/proc/self/mountinfo").read_text()
    assert str(cs.user_dir) not in mounted and str(cs.root) + "/container-engine/runs" not in mounted  # none here


def test_rootless_state_defaults_to_tmp_per_uid_and_refuses_someone_elses(cs):
    require_userns()
    default = Path("/tmp/strata-1000")
    if default.exists():
        pytest.skip(f"{default} exists (a real user 1000's?): not touching it")
    cs.edf("rldefault", f'image = "{cs.image}"\n')
    try:
        cs.run_as_user("rldefault", "true", STRATA_USER_DIR="")
        assert (default / "images").is_dir() and default.stat().st_mode & 0o777 == 0o700
        os.chown(default, 4242, 4242)  # now someone else's: refused, nothing run
        r = cs.run_as_user("rldefault", "true", check=False, STRATA_USER_DIR="")
        assert r.returncode == 2 and "/tmp/strata-1000 (your container state" in r.stderr, r.stderr
        assert "not a directory owned by you" in r.stderr
    finally:
        shutil.rmtree(default, ignore_errors=True)


# ---- a real user who is not root, through Slurm -----------------------------------------------------

NOBODY = 65534  # exists on every Debian; Slurm runs a job of it like any user's


def user_python(into: Path) -> Path:
    """An interpreter `nobody` can run with strata importable: this venv's own lives below /root (0700).

    A venv of the system's python3.X (same minor version: the venv's compiled wheels fit), whose .pth adds
    this venv's site-packages as a site dir (so the editable install of the repo is found too)."""
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{system} missing: no interpreter that a user who is not root can run")
    site_packages = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    from user_envs.install import closed_to_users
    if why := closed_to_users(str(site_packages)) or closed_to_users(str(REPO / "user_envs")):
        pytest.skip(f"this checkout is closed to other users ({why})")
    subprocess.run([str(system), "-m", "venv", "--without-pip", str(into)], check=True)
    own = next(into.glob("lib/python3*/site-packages"))
    (own / "strata-dev.pth").write_text(f"import site; site.addsitedir({str(site_packages)!r})\n")
    return into / "bin" / "python"


def test_srun_environment_as_a_user_who_is_not_root(cs):
    """What a researcher does: their srun --environment task runs rootless as them, through the SPANK plugin
    exec'ing the site's engine python (container_engine.python: here one a user can run)."""
    require_userns()
    if Path(f"/tmp/strata-{NOBODY}").exists():
        pytest.skip(f"/tmp/strata-{NOBODY} exists: not touching a real user's container state")
    home = Path(tempfile.mkdtemp(dir="/tmp", prefix="strata-e2e-user-"))  # open to the user, unlike pytest's
    alpha = cs.data["platforms"]["ml"]["vclusters"]["alpha"]
    saved = json.loads(json.dumps(alpha["container_engine"]))
    try:
        home.chmod(0o755)
        python = user_python(home / "venv")
        data = home / "data"
        data.mkdir()
        os.chown(data, NOBODY, NOBODY)
        shutil.copy(cs.image, home / "busybox.sqsh")
        (home / "edf").mkdir()
        (home / "edf" / "mine.toml").write_text(f'image = "{home}/busybox.sqsh"\nworkdir = "/data"\n'
                                                f'mounts = ["{data}:/data"]\n')
        alpha["container_engine"] = {**saved, "python": str(python),
                                     "mount_allowlist": [*saved["mount_allowlist"], str(home)]}
        cs.write()
        assert cs.cli("engine", "install", "alpha").returncode == 0
        cs.root.chmod(0o755)  # the state dir: slurm.conf, munge socket, engine.json are for every user
        cs.state.chmod(0o755)
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            "srun", "-N1", "-w", "nid002", "--environment=mine", "sh", "-c",
                            "id -u; id -g; pwd; echo from-the-task > out; grep CapEff /proc/self/status"],
                           capture_output=True, text=True, timeout=120, cwd=home,
                           env={"PATH": os.environ["PATH"], "SLURM_CONF": str(cs.conf("alpha")),
                                "EDF_PATH": str(home / "edf"), "HOME": str(home)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.split("\n") == [str(NOBODY), str(NOBODY), "/data", "CapEff:\t0000000000000000", ""]
        out = data / "out"
        assert out.read_text() == "from-the-task\n" and out.stat().st_uid == NOBODY  # written as the user
        assert Path(f"/tmp/strata-{NOBODY}").stat().st_uid == NOBODY  # the user's own engine state
    finally:
        alpha["container_engine"] = saved
        cs.write()
        cs.cli("engine", "install", "alpha")
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(f"/tmp/strata-{NOBODY}", ignore_errors=True)
