"""The pure logic of each prolog/epilog part, against an emulated node root built by the local driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vocab.site import load_site
from services.prolog import caches, gpus, jobcache, tuning
from services.prolog.wrapper import WrapperInputs, render_wrapper

REPO = Path(__file__).resolve().parents[2]


# ---- cache flush ----
def test_cache_flush_writes_3_to_the_node_roots_drop_caches(root):
    assert caches.flush_caches(root) == "dropped"
    assert (root / caches.DROP_CACHES).read_text() == "3\n"


def test_cache_flush_skips_a_root_without_proc(tmp_path):
    assert caches.flush_caches(tmp_path).startswith("skipped")
    assert not (tmp_path / caches.DROP_CACHES).exists()


# ---- GPU memory ----
def test_gpu_memory_reads_the_emulated_state(root):
    found = gpus.read_gpus(root)
    assert [g.index for g in found] == [0, 1, 2, 3] and all(g.free_share == 1.0 for g in found)


@pytest.mark.parametrize("used_share,expect", [
    (0.0, []), (0.10, []), (0.29, ["GPU2 71% free"]), (0.104, ["GPU2 89% free"]), (1.0, ["GPU2 0% free"])])
def test_gpu_memory_names_each_gpu_below_90_percent_free_rounded_down(used_share, expect):
    total = 98304
    found = [gpus.Gpu(i, total, int(total * used_share) if i == 2 else 0) for i in range(4)]
    assert gpus.memory_problems(found) == expect


def test_no_gpus_and_no_driver_reads_as_no_gpus(tmp_path):
    assert gpus.read_gpus(tmp_path) == []  # no emulated state, no pynvml here (or no driver): a CPU node


def test_vboost_is_set_on_every_emulated_gpu(root):
    gpus.set_vboost(root, 1)
    assert [g["vboost"] for g in json.loads((root / gpus.EMULATED).read_text())] == [1, 1, 1, 1]


# ---- THP and vBoost features ----
@pytest.mark.parametrize("constraints,thp,vboost", [
    ("", None, None),
    ("thp_never", "never", None),
    ("thp_never&nvidia_vboost_enabled", "never", True),
    ("[thp_madvise|thp_never]&gh200", "madvise", None),
    ("nvidia_vboost_disabled*2", None, False),
    ("aarch64&gh200", None, None),
    ("thp_neverland", None, None),  # only whole feature names count
])
def test_wanted_settings_come_from_the_jobs_constraints(constraints, thp, vboost):
    assert tuning.wanted(constraints) == tuning.Wanted(thp, vboost)


def test_thp_format_is_the_kernels_and_reads_back():
    assert tuning.format_thp("madvise") == "always [madvise] never"
    for m in tuning.THP_MODES:
        assert tuning.parse_thp(tuning.format_thp(m)) == m
    with pytest.raises(ValueError):
        tuning.parse_thp("garbage")


def test_set_thp_on_an_emulated_root_writes_what_the_kernel_would_show(root):
    assert tuning.set_thp(root, "never", emulated=True) == "thp never"
    assert (root / tuning.THP_ENABLED).read_text() == "always madvise [never]\n"


def test_node_defaults_come_from_the_tuning_role_file_else_always(root):
    assert tuning.node_defaults(root) == tuning.Wanted("always", False)
    (root / tuning.NODE_DEFAULTS).write_text(json.dumps({"thp": "madvise"}))
    assert tuning.node_defaults(root) == tuning.Wanted("madvise", False)


# ---- per-job cache dir ----
def test_job_cache_dir_is_created_private_and_removed(root):
    d = jobcache.create(root, "42", None, None)
    assert d == root / "tmp/strata-job-42" and (d / "triton").is_dir() and (d / "inductor").is_dir()
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert jobcache.remove(root, "42") and not d.exists()
    assert not jobcache.remove(root, "42")


@pytest.mark.parametrize("job_id", ["../../etc", "", "12/../..", "１２"])
def test_job_cache_refuses_a_job_id_that_is_not_a_number(root, job_id):
    with pytest.raises(jobcache.BadJobId, match="is not a job id"):
        jobcache.job_cache_dir(root, job_id)


def test_job_cache_guard_holds_under_python_O(root):
    code = "from pathlib import Path; from services.prolog import jobcache; jobcache.job_cache_dir(Path('/x'), '../..')"
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "BadJobId" in r.stderr


# ---- wrappers ----
def test_taskprolog_exports_the_node_root_and_the_jobs_cache_dirs(tmp_path):
    w = WrapperInputs("alpha", "/x/slurm.conf", "/venv/bin/python", "/repo", f"{tmp_path}/$SLURMD_NODENAME", "$STRATA_NODE_DIR/root")
    script = tmp_path / "taskprolog.sh"
    script.write_text(render_wrapper(w, "taskprolog"))
    (tmp_path / "nid001/root/tmp/strata-job-7").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "SLURMD_NODENAME": "nid001", "SLURM_JOB_ID": "7"}
    out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    root = tmp_path / "nid001/root"
    assert out.splitlines() == [f"export STRATA_NODE_ROOT={root}",
                                f"export TORCHINDUCTOR_CACHE_DIR={root}/tmp/strata-job-7/inductor",
                                f"export TRITON_CACHE_DIR={root}/tmp/strata-job-7/triton"]


def test_prolog_wrapper_on_a_real_node_uses_slash_as_root():
    w = WrapperInputs("clariden", "/etc/slurm/slurm.conf", "/opt/strata/bin/python", "/opt/strata/src",
                      "/var/lib/strata/node", "/")
    text = render_wrapper(w, "prolog")
    assert 'STRATA_NODE_ROOT="/"' in text and text.rstrip().endswith('-m services.prolog run prolog')
    assert 'export SLURM_CONF="/etc/slurm/slurm.conf"' in text


def test_slurm_conf_names_the_wrappers_the_plane_writes(tmp_path):
    from vocab.layout import Layout
    from iac.slurm_inputs import prolog_wrappers, slurm_cluster

    site = load_site(REPO / "sites/local.yaml")
    layout = Layout.of(site, tmp_path)
    c = slurm_cluster(site, layout, "bristen", ["nid007"])
    wrappers = prolog_wrappers(site, layout, "bristen")
    assert {c.prolog, c.epilog, c.task_prolog} == {str(p) for p in wrappers}
    prolog = wrappers[Path(c.prolog)]
    assert f'export SLURM_CONF="{layout.slurm_conf("bristen")}"' in prolog
    assert f'STRATA_NODE_DIR="{layout.nodes_dir}/$SLURMD_NODENAME"' in prolog
