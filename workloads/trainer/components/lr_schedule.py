"""Warmup-stable-decay (WSD) learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from ..config import LRScheduleConfig


def build_lr_schedule(lr_schedule_config: LRScheduleConfig, *, peak_lr: float, max_steps: int
                      ) -> Callable[[int], float]:
    """step (0-based) → learning rate: the WSD schedule of the [lr_schedule] section, rising to `peak_lr`
    (optimizer.lr) and ending at step `max_steps` (training.max_steps)."""
    c = lr_schedule_config
    return functools.partial(wsd_lr, peak_lr=peak_lr, max_steps=max_steps, warmup_steps=c.warmup_steps,
                             decay_fraction=c.decay_fraction, decay_shape=c.decay_shape, min_lr_ratio=c.min_lr_ratio)


def wsd_lr(step: int, *, peak_lr: float, max_steps: int, warmup_steps: int, decay_fraction: float,
           decay_shape: str = "1-sqrt", min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based).

    1) warmup: linear from peak/warmup to peak over `warmup_steps` steps;
    2) stable: peak;
    3) decay: over the last round(decay_fraction · max_steps) steps, from peak down to
       min_lr_ratio · peak, reached exactly at the last step, following `decay_shape`
       (linear: 1−p, cosine: ½(1+cos πp), 1-sqrt: 1−√p, with p the decay progress in (0, 1]).
    """
    min_lr = min_lr_ratio * peak_lr
    decay_steps = round(decay_fraction * max_steps)
    decay_start = max_steps - decay_steps
    if step < warmup_steps and step < decay_start:  # 1) warmup
        return peak_lr * (step + 1) / warmup_steps
    if step < decay_start:  # 2) stable
        return peak_lr
    p = min(1.0, (step - decay_start + 1) / decay_steps)  # 3) decay
    if decay_shape == "linear":
        factor = 1.0 - p
    elif decay_shape == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * p))
    elif decay_shape == "1-sqrt":
        factor = 1.0 - math.sqrt(p)
    else:
        raise ValueError(f"unknown decay_shape {decay_shape!r}")
    return min_lr + (peak_lr - min_lr) * factor
