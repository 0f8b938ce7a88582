"""bench/bench_mfu.py is what a lent GPU runs first: keep it working by running its CPU smoke path."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_bench_mfu_trains_on_random_int32_data_and_reports_mfu():
    r = subprocess.run([sys.executable, "bench/bench_mfu.py", "--config", "tiny", "--device", "cpu", "--steps", "4",
                        "--warmup", "1", "--metrics.peak_flops=1e12"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tiny on cpu: 3 steps after 1 warm-up" in r.stdout
    mfu = float(re.search(r"MFU \(median\): ([0-9.]+) %", r.stdout).group(1))
    assert 0 < mfu < 100
    # the model's loss on uniform random ids starts near ln(vocab): the data really was random over 8192 ids
    assert re.search(r"step 1/4 \| loss (8\.9|9\.[01])", r.stderr), r.stderr


def test_bench_mfu_passes_trainer_errors_through():
    r = subprocess.run([sys.executable, "bench/bench_mfu.py", "--config", "tiny", "--device", "cpu", "--steps", "2",
                        "--warmup", "1", "--training.no_such_key=1"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "no_such_key" in r.stderr and "Traceback" not in r.stderr, r.stderr
