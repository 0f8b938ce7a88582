"""The engine's pure parts: the OCI config it writes, which hooks apply, and what the policy refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vocab.site import SiteError, parse_site
from user_envs import hooks
from user_envs.bundle import RunSpec, build_config
from user_envs.edf import Mount
from user_envs.engine import EngineConfig, EngineError, check_policy, container_env
from user_envs.resolve import ResolvedEdf


def edf(**kw) -> ResolvedEdf:
    return ResolvedEdf(name="t", chain=(Path("/edf/t.toml"),), **kw)


def test_config_runs_the_invoking_user_without_capabilities_in_a_mount_namespace_only():
    spec = RunSpec(rootfs=Path("/r"), args=("python", "x.py"), env={"A": "1"}, cwd="/w", uid=1234, gid=99,
                   readonly=True, mounts=(Mount("/scratch/a", "/data", ("ro", "private")), Mount("/b", "/b")))
    c = build_config(spec)
    p = c["process"]
    assert p["user"] == {"uid": 1234, "gid": 99} and p["args"] == ["python", "x.py"] and p["cwd"] == "/w"
    assert p["env"] == ["A=1"] and p["noNewPrivileges"] is True
    assert all(v == [] for v in p["capabilities"].values())
    assert c["root"] == {"path": "/r", "readonly": True}
    assert c["linux"]["namespaces"] == [{"type": "mount"}]  # host network/PID/IPC, as HPC engines do
    assert c["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    binds = [m for m in c["mounts"] if m["destination"] in ("/data", "/b")]
    assert binds == [{"destination": "/data", "type": "bind", "source": "/scratch/a", "options": ["rbind", "ro", "private"]},
                     {"destination": "/b", "type": "bind", "source": "/b", "options": ["rbind", "rw", "rprivate"]}]
    assert "privileged" not in json.dumps(c)


def test_hook_definitions_use_the_containers_hooks_format():
    d = hooks.hook_definition("aws_ofi_nccl", ("/usr/lib/libnccl-net.so",), python="/py")
    assert d["version"] == "1.0.0" and d["stages"] == ["createContainer"]
    assert d["when"] == {"annotations": {"^com\\.hooks\\.aws_ofi_nccl\\.enabled$": "^true$"}}
    assert d["hook"]["path"] == "/py" and d["hook"]["args"][-1] == "/usr/lib/libnccl-net.so"
    assert hooks.gpu_hook_definition("/py")["when"] == {"always": True}


@pytest.mark.parametrize("annotations,applies", [
    ({"com.hooks.aws_ofi_nccl.enabled": "true"}, ["aws_ofi_nccl", "gpu"]),
    ({"com.hooks.aws_ofi_nccl.enabled": "false"}, ["gpu"]),
    ({"com.hooks.aws_ofi_nccl.enabledx": "true"}, ["gpu"]),
    ({}, ["gpu"]),
])
def test_hooks_apply_by_annotation(annotations, applies):
    defs = {"aws_ofi_nccl": hooks.hook_definition("aws_ofi_nccl", ()), "gpu": hooks.gpu_hook_definition()}
    names, stages = hooks.oci_hooks(defs, annotations)
    assert names == applies and len(stages["createContainer"]) == len(applies)


def cfg(tmp_path, allow=("/tmp",)) -> EngineConfig:
    return EngineConfig(vcluster="alpha", mount_allowlist=allow, denied=("/etc/munge", str(tmp_path / "state")),
                        hooks_dir=tmp_path, cache=tmp_path, runs=tmp_path, runc_root=tmp_path)


def test_policy_refuses_hooks_the_vcluster_does_not_offer(tmp_path):
    with pytest.raises(EngineError, match=r"t\.toml: annotations: com\.hooks\.cxi\.enabled: vCluster alpha does not offer"):
        check_policy(edf(annotations={"com.hooks.cxi.enabled": "true"}), cfg(tmp_path), {"gpu": {}})
    check_policy(edf(annotations={"com.hooks.cxi.enabled": "false"}), cfg(tmp_path), {"gpu": {}})


def test_policy_refuses_mounts_outside_the_allowlist_or_inside_denied_paths(tmp_path):
    (tmp_path / "state" / "munge").mkdir(parents=True)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "sneaky").symlink_to(tmp_path / "state" / "munge")
    c = cfg(tmp_path, allow=(str(tmp_path),))
    check_policy(edf(mounts=(Mount(str(tmp_path / "ok"), "/ok"),)), c, {})
    for src, why in ((tmp_path / "state" / "munge", "may never mount"), (tmp_path / "ok" / "sneaky", "may never mount"),
                     (Path("/etc/munge"), "does not exist|may never mount"), (Path("/usr"), "outside the paths"),
                     (tmp_path / "missing", "does not exist")):
        with pytest.raises(EngineError, match=why):
            check_policy(edf(mounts=(Mount(str(src), "/x"),)), c, {})
    (tmp_path / "okfoo").mkdir()  # an allowlisted path is a directory, not a string prefix
    with pytest.raises(EngineError, match="outside the paths"):
        check_policy(edf(mounts=(Mount(str(tmp_path / "okfoo"), "/x"),)), cfg(tmp_path, allow=(str(tmp_path / "ok"),)), {})


@pytest.fixture
def state_under_srv(tmp_path):
    """STRATA_STATE=<tmp>/srv/strata with site `local`: another vCluster's munge key inside it; the allowlist
    is the whole tmp dir, so that only the protected paths stand between a mount and the key."""
    root = tmp_path / "srv" / "strata" / "local"
    (root / "vclusters" / "bristen" / "munge").mkdir(parents=True)
    (root / "vclusters" / "bristen" / "munge" / "munge.key").write_bytes(b"secret")
    (tmp_path / "srv" / "data").mkdir()
    (tmp_path / "srv" / "strat").mkdir()  # a string prefix of `strata`, not a parent of it
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "up").symlink_to(tmp_path / "srv")  # a link to a parent of the state dir
    (tmp_path / "ok" / "state").symlink_to(root)  # a link inside an allowed dir to the state dir
    c = EngineConfig(vcluster="clariden", mount_allowlist=(str(tmp_path),),
                     denied=("/etc/munge", str(tmp_path / "srv" / "strata"), str(root)),
                     hooks_dir=tmp_path, cache=tmp_path, runs=tmp_path, runc_root=tmp_path)
    return tmp_path, root, c


@pytest.mark.parametrize("src,how", [
    ("srv/strata/local", "is"),
    ("srv/strata/local/vclusters/bristen/munge", "lies in"),
    ("srv/strata/local/vclusters/bristen/munge/munge.key", "lies in"),
    ("srv", "contains"),
    ("srv/strata", "is"),
    (".", "contains"),
    ("ok/up", "contains"),
    ("ok/state", "is"),
    ("ok/state/vclusters", "lies in"),
    ("ok/../srv", "contains"),
    ("srv/data/../strata/local/vclusters", "lies in"),
], ids=["is", "inside", "inside-file", "contains", "contains-state-root", "contains-allowlisted-root",
        "symlink-to-parent", "symlink-to-state", "through-symlink", "dotdot-to-parent", "dotdot-inside"])
def test_policy_refuses_a_source_that_is_contains_or_lies_in_a_protected_path(state_under_srv, src, how):
    tmp, root, c = state_under_srv
    written = f"{tmp}/{src}"
    with pytest.raises(EngineError) as e:
        check_policy(edf(mounts=(Mount(written, "/x"),)), c, {})
    msg = str(e.value)
    assert msg.startswith(f"/edf/t.toml: mounts: {written}:/x: {os.path.realpath(written)}")
    assert f" {how} {tmp}/srv/strata" in msg and "containers may never mount" in msg, msg
    assert "munge key and socket" in msg  # what it protects
    if os.path.realpath(written) != written:
        assert f"(resolved from {written})" in msg
    assert ("mount only what you need below" in msg) if how == "contains" else ("remove the mount" in msg)


def test_policy_allows_siblings_of_protected_paths(state_under_srv):
    tmp, root, c = state_under_srv
    for src in ("srv/data", "srv/strat", "ok"):
        check_policy(edf(mounts=(Mount(f"{tmp}/{src}", "/x"),)), c, {})


def test_policy_refuses_root_and_parents_of_the_hosts_munge_dir(tmp_path):
    c = EngineConfig(vcluster="alpha", mount_allowlist=("/",), denied=("/etc/munge", "/var/lib/munge"),
                     hooks_dir=tmp_path, cache=tmp_path, runs=tmp_path, runc_root=tmp_path)
    for src, protected in (("/", "/etc/munge"), ("/etc", "/etc/munge"), ("/var/lib", "/var/lib/munge")):
        with pytest.raises(EngineError, match=f"{src} contains {protected} \\(the host's munge key and socket\\)"):
            check_policy(edf(mounts=(Mount(src, "/x"),)), c, {})
    check_policy(edf(mounts=(Mount("/usr", "/x"),)), c, {})


def test_engine_config_protects_the_state_dir_from_a_mount_of_its_parent(tmp_path):
    """The issue's case: STRATA_STATE=/srv/strata, `mounts = ["/srv:/srv"]`, /srv allowlisted."""
    from vocab.layout import Layout
    from user_envs.install import engine_config

    data = site_with({"mount_allowlist": [str(tmp_path / "srv")]})
    site = parse_site(data, "f.yaml")
    layout = Layout.of(site, tmp_path / "srv" / "strata")
    (layout.root / "vclusters").mkdir(parents=True)
    c = engine_config(site, layout, "v")
    with pytest.raises(EngineError, match=f"{tmp_path}/srv contains {layout.root} \\(strata's state: every "
                                          "vCluster's munge key and socket"):
        check_policy(edf(mounts=(Mount(str(tmp_path / "srv"), "/srv"),)), c, {})


def test_container_env_is_the_callers_with_the_edf_on_top():
    env = container_env(edf(env={"A": "edf", "DROP": ""}), {"A": "host", "DROP": "x", "KEEP": "k"}, ["aws_ofi_nccl"])
    assert env == {"A": "edf", "KEEP": "k", "LD_LIBRARY_PATH": "/opt/strata/hooks/aws_ofi_nccl/lib"}


def site_with(engine: dict) -> dict:
    return {"site": "s", "nodes": [{"names": "nid001", "hardware": {"cpus": 1, "memory_gib": 1}}],
            "platforms": {"ml": {"vclusters": {"v": {"nodes": "nid001", "container_engine": engine}}}}}


def test_site_file_container_engine_key_is_optional_and_validated():
    s = parse_site(site_with({"hooks": {"cxi": {"libraries": ["/usr/lib/libcxi.so.1"]}}}), "f.yaml")
    assert s.vclusters["v"].container_engine.hooks["cxi"].libraries == ("/usr/lib/libcxi.so.1",)
    assert s.vclusters["v"].container_engine.mount_allowlist == ("/home", "/scratch", "/tmp")
    with pytest.raises(SiteError, match="did you mean 'mount_allowlist'"):
        parse_site(site_with({"mount_alowlist": []}), "f.yaml")


def test_task_prolog_runs_for_srun_tasks_and_its_exports_reach_the_container(tmp_path):
    from user_envs.engine import task_prolog

    script = tmp_path / "taskprolog"
    script.write_text('#!/bin/sh\necho "export JOB_CACHE=/cache/$SLURM_JOB_ID"\necho "unset DROP"\n')
    script.chmod(0o755)
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"ClusterName=x\nTaskProlog={script}\n")
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "DROP": "x", "PATH": "/usr/bin:/bin"}
    assert task_prolog(conf, env) == {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "PATH": "/usr/bin:/bin",
                                      "JOB_CACHE": "/cache/7"}
    assert task_prolog(conf, {"DROP": "x"}) == {"DROP": "x"}  # not in a step: Slurm runs nothing either
