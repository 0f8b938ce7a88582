"""EDFs as CSCS's documentation writes them work unchanged (cscs-docs container-engine/edf.md and run.md, and
the EDFs of CSCS's ML tutorials): bare-path mounts, `./` paths taken from the caller's working directory,
bind-mount flags forwarded to runc, `base_environment` as a string or an array; what the engine refuses on
purpose (mounts outside the allowlist, the site's state) is still refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from user_envs.bundle import RemapTool, RunSpec, build_config
from user_envs.edf import EdfError, Mount, parse_mount
from user_envs.engine import EngineConfig, EngineError, check_policy
from user_envs.resolve import resolve

# An EDF shaped like those of CSCS's ML tutorials: storage mounted by bare paths, a hook with its variant.
TUTORIAL = """\
image = "/capstor/scratch/cscs/${USER}/images/nanotron.sqsh"
mounts = ["/capstor", "/iopsstor", "/users"]
workdir = "/users/${USER}/"
writable = true

[annotations]
com.hooks.aws_ofi_nccl.enabled = "true"
com.hooks.aws_ofi_nccl.variant = "cuda12"

[env]
NCCL_DEBUG = "INFO"
"""


@pytest.fixture
def tree(tmp_path):
    """An EDF folder (on EDF_PATH) apart from the caller's working directory, as on a login node."""
    (tmp_path / "edf").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path


def env(tree, **extra):
    return {"EDF_PATH": str(tree / "edf"), "USER": "alice", "SCRATCH": "/capstor/scratch/cscs/alice",
            "HOME": "/nonexistent", **extra}


def write(tree, name: str, text: str) -> Path:
    p = tree / "edf" / f"{name}.toml"
    p.write_text(text)
    return p


def test_tutorial_edf_with_bare_path_mounts_resolves_and_prints_as_itself(tree):
    write(tree, "nanotron", TUTORIAL)
    r = resolve("nanotron", env(tree), cwd=str(tree / "work"))
    assert r.mounts == (Mount("/capstor", "/capstor"), Mount("/iopsstor", "/iopsstor"), Mount("/users", "/users"))
    assert r.image == "/capstor/scratch/cscs/alice/images/nanotron.sqsh" and r.workdir == "/users/alice/"
    write(tree, "again", r.to_toml())
    assert resolve("again", env(tree), cwd="/").mounts == r.mounts


@pytest.mark.parametrize("mounts,want", [  # edf.md's `mounts` examples, then a flagged one
    ('["/capstor/scratch/cscs/amadonna:/capstor/scratch/cscs/amadonna"]',
     [Mount("/capstor/scratch/cscs/amadonna", "/capstor/scratch/cscs/amadonna")]),
    ('["/capstor/scratch/cscs/${USER}:/capstor/scratch/cscs/${USER}"]',
     [Mount("/capstor/scratch/cscs/alice", "/capstor/scratch/cscs/alice")]),
    ('["${SCRATCH}:/scratch"]', [Mount("/capstor/scratch/cscs/alice", "/scratch")]),
    ('["/capstor/store:/store:ro+private"]', [Mount("/capstor/store", "/store", ("ro", "private"))]),
])
def test_docs_mount_examples_resolve(tree, mounts, want):
    write(tree, "m", f"image = \"/i.sqsh\"\nmounts = {mounts}\n")
    assert list(resolve("m", env(tree), cwd="/").mounts) == want


def test_docs_base_environment_shapes(tree):
    write(tree, "common_env", 'image = "/img/base.sqsh"\nmounts = ["/capstor"]\n[env]\nA = "1"\n')
    write(tree, "ml_pytorch_env1", 'mounts = ["/iopsstor"]\n[env]\nB = "2"\n')
    write(tree, "one", 'base_environment = "common_env"\n')
    write(tree, "two", 'base_environment = ["common_env", "ml_pytorch_env1"]\nmounts = ["/users"]\n')
    assert resolve("one", env(tree), cwd="/").image == "/img/base.sqsh"
    r = resolve("two", env(tree), cwd="/")
    assert [m.dst for m in r.mounts] == ["/capstor", "/iopsstor", "/users"] and r.env == {"A": "1", "B": "2"}


def test_relative_paths_are_taken_from_the_callers_working_directory_not_the_edfs_folder(tree):
    work = tree / "work"
    (work / "bases").mkdir()
    (work / "bases" / "common.toml").write_text('mounts = ["./data"]\n')
    write(tree, "app", 'base_environment = "./bases/common.toml"\nimage = "./images/app.sqsh"\n'
                       'workdir = "./run"\nmounts = ["./in:/in:ro", "../shared:./shared"]\n')
    r = resolve("app", env(tree), cwd=str(work))
    assert r.image == f"{work}/images/app.sqsh" and r.workdir == f"{work}/run"
    assert r.mounts == (Mount(f"{work}/data", f"{work}/data"), Mount(f"{work}/in", "/in", ("ro",)),
                        Mount(f"{tree}/shared", f"{work}/shared"))
    # `--environment=./app.toml` (run.md): the EDF itself, from the working directory too
    (work / "app.toml").write_text('image = "./x.sqsh"\n')
    assert resolve("./app.toml", env(tree), cwd=str(work)).image == f"{work}/x.sqsh"


def test_a_relative_base_beside_the_edf_but_not_in_the_working_directory_says_so(tree):
    write(tree, "common", 'image = "/i.sqsh"\n')
    p = write(tree, "app", 'base_environment = "./common.toml"\n')
    with pytest.raises(EdfError) as e:
        resolve("app", env(tree), cwd=str(tree / "work"))
    msg = str(e.value)
    assert msg.startswith(f"{p}: base_environment: ") and "taken from the working directory" in msg
    assert f'write "{tree}/edf/common.toml"' in msg


@pytest.mark.parametrize("line,why", [
    ('mounts = ["data:/data"]', 'write "./data"'),
    ('workdir = "run"', 'write "./run"'),
    ('mounts = ["/capstor:ro"]', 'write "/capstor:/capstor:ro"'),
])
def test_a_relative_path_without_dot_slash_is_refused_with_the_fix(tree, line, why):
    write(tree, "bad", f'image = "/i.sqsh"\n{line}\n')
    with pytest.raises(EdfError, match=why) as e:
        resolve("bad", env(tree), cwd="/w")
    assert "bad.toml: " in str(e.value)


def test_registry_images_and_table_values_are_not_paths(tree):
    write(tree, "r", 'image = "library/ubuntu:24.04"\n[env]\nPYTHONPATH = "./src"\n'
                     '[annotations]\ncom.hooks.ssh.authorize_ssh_key = "./keys"\n')
    r = resolve("r", env(tree), cwd="/w")
    assert r.image == "library/ubuntu:24.04" and r.env == {"PYTHONPATH": "./src"}
    assert r.annotations == {"com.hooks.ssh.authorize_ssh_key": "./keys"}
    (tree / "edf" / "team").mkdir()  # a name with a '/' that is neither ./ nor .toml: found in the search path
    (tree / "edf" / "team" / "base.toml").write_text('image = "/team.sqsh"\n')
    assert resolve("team/base", env(tree), cwd="/w").image == "/team.sqsh"


def test_trailing_comma_of_the_docs_env_example_gets_its_own_fix(tree):
    write(tree, "c", '[env]\nMY_RUN = "production",\nDEBUG = "false"\n')
    with pytest.raises(EdfError, match="remove the ',' ending line 2"):
        resolve("c", env(tree), cwd="/")


def _options(m: Mount, rootless: bool = False) -> list[str]:
    spec = RunSpec(rootfs=Path("/r"), args=("true",), env={}, cwd="/", uid=1, gid=1, readonly=False, mounts=(m,),
                   rootless=RemapTool("/usr/bin/unshare", "/lib64/ld-linux-x86-64.so.2") if rootless else None)
    return next(x["options"] for x in build_config(spec)["mounts"] if x["destination"] == m.dst)


@pytest.mark.parametrize("text,options", [
    ("/d:/d:ro+nosuid+nodev+noexec", ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"]),
    ("/d:/d:rslave", ["rbind", "rw", "rslave"]),              # a propagation flag replaces the default
    ("/d:/d:bind+rro+rnosymfollow", ["rbind", "ro", "rro", "rnosymfollow", "rprivate"]),  # binds stay recursive
    ("/d:/d:noatime+recursive", ["rbind", "rw", "noatime", "rprivate"]),
    ("/d", ["rbind", "rw", "rprivate"]),
])
def test_bind_flags_are_forwarded_as_runc_mount_options(text, options):
    m = parse_mount(text, cwd="/")
    assert _options(m) == _options(m, rootless=True) == options


@pytest.mark.parametrize("text,why", [
    ("/d:/d:nosiud", "did you mean 'nosuid'"),         # runc would take it as fs data and ignore it
    ("/d:/d:remount", "refused: it would remount the destination"),
    ("/d:/d:size=1g", "file-system data, which a bind mount ignores"),
    ("/d:/d:ro,nosuid", r"join flags with '\+', not ','; write 'ro\+nosuid'"),
    ("/d:/d:rro+rrw", "contradict"),
])
def test_flags_runc_would_ignore_or_trip_on_are_refused(text, why):
    with pytest.raises(ValueError, match=why):
        parse_mount(text, cwd="/")


def test_policy_still_refuses_protected_and_outside_sources_written_bare_or_relative(tree):
    state = tree / "state"
    (state / "vclusters" / "beta" / "munge").mkdir(parents=True)
    (tree / "scratch").mkdir()
    cfg = EngineConfig(vcluster="alpha", mount_allowlist=(str(tree),), denied=("/etc/munge", str(state)),
                       hooks_dir=tree, cache=tree, runs=tree, runc_root=tree)
    cases = [(f'"{state}/vclusters/beta/munge"', str(tree), "may never mount"),
             ('"./vclusters/beta/munge:/m:ro"', str(state), "may never mount"),
             ('"/usr"', str(tree), "outside the paths vCluster alpha allows")]
    for mount, cwd, why in cases:
        write(tree, "p", f"image = \"/i.sqsh\"\nmounts = [{mount}]\n")
        with pytest.raises(EngineError, match=why):
            check_policy(resolve("p", env(tree), cwd=cwd), cfg, {})
    write(tree, "ok", 'image = "/i.sqsh"\nmounts = ["./scratch:/scratch:ro+nosuid"]\n')
    check_policy(resolve("ok", env(tree), cwd=str(tree)), cfg, {})
