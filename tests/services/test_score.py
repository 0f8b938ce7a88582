"""`strata score`: a busy command scores busy, an idle one idle, the exit code and trainer metrics come through."""

from __future__ import annotations

import json
import sys

from services.vetting.score import Score, bound_of, metrics_medians, render, run_scored

BUSY = [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass"]


def test_a_busy_command_uses_cpu_and_an_idle_one_does_not(tmp_path):
    busy = run_scored(BUSY, interval=0.2)
    idle = run_scored(["sh", "-c", "sleep 1; exit 3"], interval=0.2)
    one_core = 1 / busy.cpus
    assert busy.exit_code == 0 and busy.cpu_share > 0.5 * one_core, busy
    assert idle.exit_code == 3 and idle.cpu_share < 0.1 * one_core, idle
    assert busy.samples >= 3 and busy.peak_rss_gib > 0


def test_trainer_metrics_give_median_tokens_per_s_and_mfu_of_the_second_half(tmp_path):
    m = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "tokens_per_s": tps, "mfu": mfu} for i, (tps, mfu) in
            enumerate([(10, 0.01), (20, 0.02), (100, 0.40), (120, 0.42), (110, 0.41), (130, 0.43)])]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert metrics_medians(m) == (120, 0.42)
    assert metrics_medians(tmp_path / "none.jsonl") == (None, None)


def test_verdict_names_the_resource_nearest_its_bound():
    s = Score(command=["x"], exit_code=0, wall_s=1, cpus=2, cpu_share=0.3, host_busy_share=0.3, peak_rss_gib=1,
              mem_total_gib=100, gpus=4, gpu_util=0.95, gpu_mem_share=0.8, tokens_per_s=5000.0, mfu=0.41)
    assert bound_of(s) == "gpu-bound (95%)"
    s.bound = bound_of(s)
    text = render(s)
    assert "5,000 tokens/s, MFU 41.0% of peak" in text and "verdict  gpu-bound (95%)" in text
    s.gpu_util = 0.2
    assert bound_of(s) == "not saturated (highest: cpu 30%)"
