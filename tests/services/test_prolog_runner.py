"""The prolog runner: every part runs in order, each is logged, one failure fails all and undoes the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iac.drivers.local import reboot
from vocab.site import load_site
from services.prolog import runner
from services.prolog.runner import Context, discover, drain_reason, part_name, run_parts

REPO = Path(__file__).resolve().parents[2]
THP = "sys/kernel/mm/transparent_hugepage/enabled"


@pytest.fixture
def node(tmp_path) -> Path:
    """A node dir as the local site keeps it: `<dir>/root` booted by the local driver."""
    site = load_site(REPO / "sites/local.yaml")
    d = tmp_path / "nid001"
    d.mkdir()
    reboot(site.nodes["nid001"], d / "root", "clariden", "img")
    return d


def env_for(node: Path, job: str = "9", constraints: str = "") -> dict[str, str]:
    # no SLURMD_NODENAME: the runner must not call scontrol outside Slurm
    return {"STRATA_NODE_DIR": str(node), "STRATA_NODE_ROOT": str(node / "root"),
            "SLURM_JOB_ID": job, "SLURM_JOB_CONSTRAINTS": constraints, "PATH": "/usr/bin:/bin"}


def install(node: Path, kind: str, name: str, text: str) -> Path:
    d = node / "root/etc/strata" / f"{kind}.d"
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text)
    p.chmod(0o755)
    return p


def test_parts_are_found_in_numbered_order_without_backups_or_caches(tmp_path):
    for n in ("20-b.py", "10-a", "30-c.sh", "README", "40-d.py~", ".10-hidden", "x-10"):
        (tmp_path / n).write_text("")
    (tmp_path / "__pycache__").mkdir()
    assert [p.name for p in discover(tmp_path)] == ["10-a", "20-b.py", "30-c.sh"]
    assert [part_name(p) for p in discover(tmp_path)] == ["a", "b", "c"]


def test_packaged_parts_cover_the_prolog_and_the_epilog():
    assert [part_name(p) for p in discover(runner.PARTS / "prolog.d")] == [
        "cache-flush", "gpu-memory", "thp-vboost", "job-cache", "vetnode"]
    assert [part_name(p) for p in discover(runner.PARTS / "epilog.d")] == ["job-cache", "thp-vboost"]


def test_every_part_runs_even_after_one_failed(node):
    install(node, "prolog", "10-fails", "#!/bin/sh\necho 'no fabric' >&2\nexit 3\n")
    install(node, "prolog", "20-raises.py", "def run(ctx):\n    raise KeyError('oops')\n")
    install(node, "prolog", "30-passes.py", "def run(ctx):\n    return 'fine ' + ctx.job_id\n")
    ctx = runner.context_from_env("prolog", env_for(node))
    results = run_parts("prolog", ctx)
    assert [(r.name, r.ok, r.detail) for r in results] == [
        ("fails", False, "exit 3: no fabric"), ("raises", False, "KeyError: 'oops'"), ("passes", True, "fine 9")]
    assert drain_reason("prolog", results) == "strata: prolog fails: exit 3: no fabric"


def test_prolog_applies_the_jobs_thp_and_epilog_resets_it(node):
    root = node / "root"
    assert runner.main(["run", "prolog"], env_for(node, constraints="thp_madvise")) == 0
    assert (root / THP).read_text() == "always [madvise] never\n"
    assert (root / "tmp/strata-job-9/triton").is_dir()
    assert runner.main(["run", "epilog"], env_for(node, constraints="thp_madvise")) == 0
    assert (root / THP).read_text() == "[always] madvise never\n"
    assert not (root / "tmp/strata-job-9").exists()
    checks = json.loads((node / "checks.json").read_text())
    assert checks["prolog"]["ok"] and checks["epilog"]["ok"] and checks["prolog"]["job"] == "9"
    log = (node / "log/prolog.log").read_text().splitlines()
    assert [line.split()[3:5] for line in log] == [
        ["cache-flush", "ok"], ["gpu-memory", "ok"], ["thp-vboost", "ok"], ["job-cache", "ok"], ["vetnode", "ok"]]


def test_failed_prolog_leaves_nothing_half_applied(node):
    root = node / "root"
    gpus = json.loads((root / "run/strata/gpus.json").read_text())
    gpus[1]["memory_used_mib"] = gpus[1]["memory_total_mib"] // 2
    (root / "run/strata/gpus.json").write_text(json.dumps(gpus))
    assert runner.main(["run", "prolog"], env_for(node, constraints="thp_never&nvidia_vboost_enabled")) == 1
    # the later parts ran, then the epilog parts undid them
    assert (root / THP).read_text() == "[always] madvise never\n"
    assert all(g["vboost"] == 0 for g in json.loads((root / "run/strata/gpus.json").read_text()))
    assert not (root / "tmp/strata-job-9").exists()
    checks = json.loads((node / "checks.json").read_text())["prolog"]
    assert not checks["ok"] and checks["parts"][1] == {**checks["parts"][1], "ok": False, "detail": "GPU1 50% free"}
    assert "undone by epilog parts: job-cache ok, thp-vboost ok" in (node / "log/prolog.log").read_text()


def test_bad_usage_exits_2():
    assert runner.main(["run", "postlog"], {}) == 2
