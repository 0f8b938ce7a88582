"""Per-step metrics: one JSON line per step, MFU against the device's peak, and a plot command.

MFU = (FLOP/token · tokens/s per device) / peak FLOP/s per device, with
FLOP/token ≈ 6·N(non-embedding, output head included) + 12·L·H·Q·T (PaLM appendix B; nanoGPT, torchtitan).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import MetricsConfig

logger = logging.getLogger(__name__)

# Dense BF16 peak FLOP/s (no sparsity), matched against torch.cuda.get_device_name().
PEAK_FLOPS = (("GH200", 989e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12))

FIELDS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_device", "mfu",
          "step_time_s", "ckpt_stall_s")


def device_peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """Peak FLOP/s of one device: `override` if set, else by GPU name; None when unknown (e.g. CPU)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    logger.warning("unknown GPU %r: MFU not reported (set metrics.peak_flops)", name)
    return None


class MetricsLogger:
    """Appends one JSON object per step to a JSONL file and prints a console line now and then (rank 0 only).

    Configured by its own section, [metrics]: the file (metrics.jsonl, default <run_dir>/metrics.jsonl), the
    console cadence and the MFU peak (metrics.peak_flops, default from `device`'s name).
    """

    def __init__(self, metrics_config: MetricsConfig, *, run_dir: str | Path, flops_per_token: float,
                 world_size: int, device: torch.device, enabled: bool = True, resume_step: int = 0):
        """`flops_per_token` of the model at the run's sequence length; `world_size` devices share each step's
        tokens; `enabled` on rank 0 only; `resume_step`: lines past it are dropped (trained again)."""
        self.config = metrics_config
        self.path = Path(metrics_config.jsonl or Path(run_dir) / "metrics.jsonl")
        self.flops_per_token, self.world_size = flops_per_token, world_size
        self.peak = device_peak_flops(device, metrics_config.peak_flops)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
            self._file = open(self.path, "a", buffering=1)

    def _truncate_after(self, step: int) -> None:
        """Drop lines of steps past the resumed checkpoint: they are about to be trained again."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, *, step: int, loss: float, lr: float, grad_norm: float, tokens: int, step_time_s: float,
            ckpt_stall_s: float) -> dict:
        """Write the line for `step` (`tokens` = global tokens in the step) and return it."""
        tps = tokens / step_time_s
        per_device = tps / self.world_size
        mfu = self.flops_per_token * per_device / self.peak if self.peak else None
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tps,
                  "tokens_per_s_per_device": per_device, "mfu": mfu, "step_time_s": step_time_s,
                  "ckpt_stall_s": ckpt_stall_s}
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
        return record

    def log_console(self, record: dict, *, max_steps: int, last: bool) -> None:
        """Print `record` as one console line at step 1, every metrics.console_every steps and at the `last`
        step of this run (the end of training, or a preemption)."""
        step = record["step"]
        if not self.enabled or not (step % self.config.console_every == 0 or last or step == 1):
            return
        mfu = f"{100 * record['mfu']:.1f}%" if record["mfu"] is not None else "n/a"
        logger.info("step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s | mfu %s | ckpt %.3fs",
                    step, max_steps, record["loss"], record["lr"], record["grad_norm"], record["tokens_per_s"], mfu,
                    record["ckpt_stall_s"])

    def close(self) -> None:
        """Close the file (rank 0)."""
        if self.enabled:
            self._file.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics JSONL file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(jsonl: str | Path, png: str | Path) -> Path:
    """Plot loss and throughput against the step into a PNG (matplotlib, Agg backend)."""
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl)
    if not records:
        raise ValueError(f"{jsonl} holds no metrics")
    fig = metrics_figure(records, Path(jsonl).parent.name or str(jsonl))
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def metrics_figure(records: list[dict], title: str):
    """The figure of loss, tokens/s and MFU per step; steps are whole numbers on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_tps) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot(steps, [r["loss"] for r in records])
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_tps.plot(steps, [r["tokens_per_s"] for r in records], label="tokens/s")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_xlabel("step")
    ax_tps.grid(alpha=0.3)
    mfus = [r.get("mfu") for r in records]
    if any(m is not None for m in mfus):
        ax_mfu = ax_tps.twinx()
        ax_mfu.plot(steps, [100 * m if m is not None else float("nan") for m in mfus], color="tab:orange")
        ax_mfu.set_ylabel("MFU %", color="tab:orange")
    ax_tps.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 2.5 on a short run
    fig.suptitle(title)
    fig.tight_layout()
    return fig
