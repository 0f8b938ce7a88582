"""Optimizers: AdamW, and AdEMAMix (Pagliardini et al., arXiv 2409.03137) as an option.

Weight decay applies to matrices (embeddings, projections, head) only; norms and the xIELU scalars are
not decayed. The learning rate is set each step by the schedule (`group["lr"]`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimizerConfig


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ≥2-D weights with weight decay, everything else without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, optimizer_config: OptimizerConfig, *, max_steps: int) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or AdEMAMix, per the [optimizer] section; `max_steps` (training.max_steps) is
    AdEMAMix's warm-up when optimizer.ademamix_warmup_steps is unset."""
    cfg = optimizer_config
    groups = build_param_groups(model, cfg.weight_decay)
    on_cuda = next(model.parameters()).is_cuda
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 fused=True if on_cuda else None)
    return AdEMAMix(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2, cfg.ademamix_beta3), eps=cfg.eps,
                    alpha=cfg.ademamix_alpha, warmup_steps=cfg.ademamix_warmup_steps or max_steps)


def ademamix_alpha(step: int, alpha: float, warmup_steps: int) -> float:
    """α(t) = min(t·α / T, α): the slow EMA is mixed in gradually (paper §3, eq. for α scheduler)."""
    return min(step * alpha / warmup_steps, alpha) if warmup_steps > 0 else alpha


def ademamix_beta3(step: int, beta_start: float, beta_end: float, warmup_steps: int) -> float:
    """β3(t) grows from β_start to β_end so that the EMA half-life increases linearly (paper §3)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return beta_end
    ls, le = math.log(beta_start), math.log(beta_end)
    frac = step / warmup_steps
    return min(math.exp(ls * le / ((1 - frac) * le + frac * ls)), beta_end)


class AdEMAMix(torch.optim.Optimizer):
    """Adam with a mixture of a fast (β1) and a slow (β3) gradient EMA (arXiv 2409.03137, Alg. 1).

    m1 ← β1·m1 + (1−β1)·g;  m2 ← β3(t)·m2 + (1−β3(t))·g;  ν ← β2·ν + (1−β2)·g²
    θ ← θ − η·( (m1/(1−β1ᵗ) + α(t)·m2) / (√(ν/(1−β2ᵗ)) + ε) + λ·θ )
    m2 has no bias correction, as in the paper.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 eps: float = 1e-8, weight_decay: float = 0.0, alpha: float = 5.0, warmup_steps: int = 0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha,
                        warmup_steps=warmup_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient (Algorithm 1 of the paper)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2, beta3_final = group["betas"]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_slow"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
            t = int(self.state[params[0]]["step"].item())  # a CPU scalar: no device sync
            alpha = ademamix_alpha(t, group["alpha"], group["warmup_steps"])
            beta3 = ademamix_beta3(t, beta1, beta3_final, group["warmup_steps"])
            grads = [p.grad for p in params]
            m1 = [self.state[p]["exp_avg"] for p in params]
            m2 = [self.state[p]["exp_avg_slow"] for p in params]
            nu = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_lerp_(m1, grads, 1 - beta1)
            torch._foreach_lerp_(m2, grads, 1 - beta3)
            torch._foreach_mul_(nu, beta2)
            torch._foreach_addcmul_(nu, grads, grads, value=1 - beta2)
            denom = torch._foreach_sqrt(nu)
            torch._foreach_div_(denom, math.sqrt(1 - beta2 ** t))
            torch._foreach_add_(denom, group["eps"])
            numer = torch._foreach_div(m1, 1 - beta1 ** t)
            torch._foreach_add_(numer, m2, alpha=alpha)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_addcdiv_(params, numer, denom, value=-group["lr"])
        return loss
