"""The engine's pure parts: the OCI config it writes, which hooks apply, and what the policy refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iac.site import SiteError, parse_site
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
