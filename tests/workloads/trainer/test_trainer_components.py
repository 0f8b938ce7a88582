"""Schedule, optimizers, Young's interval, distributed env, metrics: pure functions and small modules."""

import json
import logging
import math
from typing import get_type_hints

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from workloads.trainer import preflight
from workloads.trainer.components import metrics as metrics_mod
from workloads.trainer.components.checkpoint import CheckpointManager, young_interval
from workloads.trainer.components.lr_schedule import build_lr_schedule, wsd_lr
from workloads.trainer.components.metrics import MetricsLogger, device_peak_flops, plot_metrics, read_metrics
from workloads.trainer.components.optimizer import AdEMAMix, ademamix_beta3, build_optimizer, build_param_groups
from workloads.trainer.config import (
    CheckpointConfig,
    DataConfig,
    LRScheduleConfig,
    MetricsConfig,
    OptimizerConfig,
    ParallelConfig,
    TrainerConfig,
    TrainingConfig,
)
from workloads.trainer.data import goldfish_mask
from workloads.trainer.loader import ShardedBatchLoader, build_loader, resolve_data_paths
from workloads.trainer.model import ModelArgs, Transformer
from workloads.trainer.parallelize import init_distributed, maybe_enable_amp, parallelize_model, resolve_dist_env

# Each component and the config sections it takes (beside runtime facts: run dir, rank, world size, device).
COMPONENT_SECTIONS = {
    CheckpointManager.__init__: [CheckpointConfig],
    MetricsLogger.__init__: [MetricsConfig],
    build_optimizer: [OptimizerConfig],
    build_lr_schedule: [LRScheduleConfig],
    build_loader: [DataConfig, TrainingConfig],  # [training] holds the batch shape and max_steps
    resolve_data_paths: [DataConfig],
    parallelize_model: [ParallelConfig, TrainingConfig],  # [training] holds compile and mixed_precision
    maybe_enable_amp: [TrainingConfig],
    init_distributed: [TrainingConfig, ParallelConfig],  # [training] holds device and num_threads
    preflight.check_device: [TrainingConfig, ParallelConfig],
    preflight.check_data: [DataConfig],
}


@pytest.mark.parametrize("component", COMPONENT_SECTIONS, ids=lambda f: f.__qualname__)
def test_components_take_their_own_config_sections_not_the_whole_tree(component):
    hints = get_type_hints(component)
    sections = [t for t in hints.values() if isinstance(t, type) and issubclass(t, BaseModel)]
    assert sections == COMPONENT_SECTIONS[component] and TrainerConfig not in sections


def test_lr_schedule_built_from_its_section_is_the_wsd_function():
    section = LRScheduleConfig(warmup_steps=3, decay_fraction=0.5, decay_shape="cosine", min_lr_ratio=0.2)
    schedule = build_lr_schedule(section, peak_lr=2.0, max_steps=10)
    assert [schedule(s) for s in range(10)] == [
        wsd_lr(s, peak_lr=2.0, max_steps=10, warmup_steps=3, decay_fraction=0.5, decay_shape="cosine",
               min_lr_ratio=0.2) for s in range(10)]


def test_wsd_warms_up_holds_then_decays_to_min():
    kw = dict(peak_lr=1.0, max_steps=100, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    lrs = [wsd_lr(s, decay_shape="linear", **kw) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0  # 1) warmup
    assert set(lrs[10:80]) == {1.0}  # 2) stable
    assert lrs[80] < 1.0 and lrs[99] == pytest.approx(0.1)  # 3) decay to min at the last step
    assert all(a >= b for a, b in zip(lrs[80:-1], lrs[81:], strict=True))
    mid = 89  # p = 0.5
    assert wsd_lr(mid, decay_shape="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert wsd_lr(mid, decay_shape="1-sqrt", **kw) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert wsd_lr(mid, decay_shape="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)


def test_young_interval_matches_the_formula():
    # C = 40 s blocking save, MTBF 12 h, 5 s steps: sqrt(2·40·43200) = 1859 s → 372 steps
    assert young_interval(40.0, 43_200.0, 5.0) == round(math.sqrt(2 * 40 * 43_200) / 5)
    assert young_interval(1e-6, 10.0, 100.0) == 1  # never below one step


def test_weight_decay_only_on_matrices():
    model = Transformer(ModelArgs(vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=8))
    decay, no_decay = build_param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ademamix_follows_algorithm_1():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = AdEMAMix([p], lr=0.01, betas=(0.9, 0.99, 0.999), eps=1e-8, weight_decay=0.1, alpha=5.0, warmup_steps=4)
    theta, m1, m2, nu = p.detach().clone().double(), 0, 0, 0
    for t in range(1, 7):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        g = g.double()
        alpha, beta3 = min(t * 5.0 / 4, 5.0), ademamix_beta3(t, 0.9, 0.999, 4)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = beta3 * m2 + (1 - beta3) * g
        nu = 0.99 * nu + 0.01 * g * g
        update = (m1 / (1 - 0.9**t) + alpha * m2) / ((nu / (1 - 0.99**t)).sqrt() + 1e-8)
        theta = theta - 0.01 * (update + 0.1 * theta)
        torch.testing.assert_close(p.detach().double(), theta, rtol=1e-5, atol=1e-6)
    assert ademamix_beta3(0, 0.9, 0.999, 4) == pytest.approx(0.9) and ademamix_beta3(4, 0.9, 0.999, 4) == 0.999


def test_slurm_env_gives_ranks_and_rendezvous():
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "nid[007-008]", "SLURM_JOB_ID": "123456", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    d = resolve_dist_env(env)
    assert (d.rank, d.local_rank, d.world_size, d.local_world_size) == (3, 1, 4, 2)
    assert d.master_addr == "nid007" and d.master_port == 15000 + 123456 % 20000 and d.source == "slurm"
    # the batch script itself (no srun step) is one process, whatever SLURM_NTASKS says
    assert resolve_dist_env({k: v for k, v in env.items() if k != "SLURM_STEP_ID"}).world_size == 1
    # torchrun's variables win
    tr = resolve_dist_env({**env, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                           "MASTER_PORT": "1234"})
    assert (tr.rank, tr.world_size, tr.master_addr, tr.master_port, tr.source) == (1, 2, "h", 1234, "torchrun")


def test_metrics_line_has_every_field_and_mfu(tmp_path):
    log = MetricsLogger(MetricsConfig(jsonl=str(tmp_path / "m.jsonl"), peak_flops=1e14), run_dir=tmp_path,
                        flops_per_token=1e9, world_size=4, device=torch.device("cpu"))
    rec = log.log(step=1, loss=2.5, lr=1e-3, grad_norm=0.5, tokens=8000, step_time_s=2.0, ckpt_stall_s=0.1)
    log.close()
    assert rec["tokens_per_s"] == 4000 and rec["tokens_per_s_per_device"] == 1000
    assert rec["mfu"] == pytest.approx(1e9 * 1000 / 1e14)
    line = json.loads((tmp_path / "m.jsonl").read_text())
    assert set(line) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_device", "mfu",
                         "step_time_s", "ckpt_stall_s"}
    assert device_peak_flops(torch.device("cpu")) is None and device_peak_flops(torch.device("cpu"), 5e11) == 5e11


def test_metrics_resume_drops_steps_after_the_checkpoint_and_plots(tmp_path):
    path = tmp_path / "metrics.jsonl"  # the default: <run_dir>/metrics.jsonl
    opts = dict(run_dir=tmp_path, flops_per_token=1.0, world_size=1, device=torch.device("cpu"))
    log = MetricsLogger(MetricsConfig(), **opts)
    assert log.path == path and log.peak is None  # no MFU on CPU unless metrics.peak_flops is set
    for s in range(1, 6):
        log.log(step=s, loss=10 - s, lr=1.0, grad_norm=1.0, tokens=100, step_time_s=0.1, ckpt_stall_s=0.0)
    log.close()
    MetricsLogger(MetricsConfig(), **opts, resume_step=3).close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    png = plot_metrics(path, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_ranks_read_disjoint_slices_that_cover_each_global_batch():
    data = [np.arange(9, dtype=np.int64) + i for i in range(1000)]
    loaders = [ShardedBatchLoader(data, rank=r, world_size=2, micro_batch_size=4, grad_accum_steps=2,
                                  vocab_size=2000, device=torch.device("cpu")) for r in (0, 1)]
    assert loaders[0].global_batch_size == 16
    ids = [{i for m in range(2) for i in ld.sample_ids(16, m)} for ld in loaders]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(16, 32))
    x, y = loaders[1].get(16, 1)
    assert x.shape == y.shape == (4, 8) and torch.equal(x[:, 1:], y[:, :-1])


def test_loader_drops_goldfish_labels_and_keeps_the_inputs():
    data = [np.arange(33, dtype=np.int64) * 7 % 61 + i for i in range(64)]
    opts = dict(rank=0, world_size=1, micro_batch_size=4, grad_accum_steps=1, vocab_size=128,
                device=torch.device("cpu"))
    x, y = ShardedBatchLoader(data, **opts).get(0, 0)
    fx, fy = ShardedBatchLoader(data, **opts, goldfish=(3, 4)).get(0, 0)
    keep = goldfish_mask(y, 3, 4)
    assert torch.equal(fx, x) and not keep.all()
    assert torch.equal(fy, y.masked_fill(~keep, -100))


def test_metrics_console_line_at_the_first_every_nth_and_the_last_step(tmp_path):
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # the trainer's logger may not propagate
    metrics_mod.logger.addHandler(handler)
    old_level = metrics_mod.logger.level
    metrics_mod.logger.setLevel(logging.INFO)
    try:
        log = MetricsLogger(MetricsConfig(console_every=3), run_dir=tmp_path, flops_per_token=1.0, world_size=1,
                            device=torch.device("cpu"))
        for s in range(1, 8):
            rec = log.log(step=s, loss=1.0, lr=1e-3, grad_norm=0.5, tokens=100, step_time_s=0.1, ckpt_stall_s=0.0)
            log.log_console(rec, max_steps=7, last=s == 7)
        log.close()
        quiet = MetricsLogger(MetricsConfig(), run_dir=tmp_path, flops_per_token=1.0, world_size=1,
                              device=torch.device("cpu"), enabled=False)  # ranks other than 0
        quiet.log_console(rec, max_steps=7, last=True)
    finally:
        metrics_mod.logger.removeHandler(handler)
        metrics_mod.logger.setLevel(old_level)
    assert [line.split(" |")[0] for line in lines] == ["step 1/7", "step 3/7", "step 6/7", "step 7/7"]
    assert lines[0] == "step 1/7 | loss 1.0000 | lr 1.00e-03 | gnorm 0.500 | 1000 tok/s | mfu n/a | ckpt 0.000s"


def test_metrics_plot_labels_whole_steps_only():
    import matplotlib.pyplot as plt

    from workloads.trainer.components.metrics import metrics_figure

    fig = metrics_figure([{"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 300.0} for s in range(1, 11)], "run")
    ax = fig.axes[1]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
