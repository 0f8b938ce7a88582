"""Model shape: the `ModelArgs` dataclass, its presets, and analytic parameter / FLOP counts.

Presets follow the Apertus recipe (arXiv 2509.14233): d_ffn = 5.25·d, head_dim 128 for the large
models, 8 KV heads (GQA), vocabulary 131,072. `tiny` is a CPU smoke model sized to the bundled
8,192-token sample tokenizer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass


class ModelShapeError(ValueError):
    """A model shape that cannot be built; the message names the fields at fault and values that work."""


_POSITIVE = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_multiplier", "norm_eps", "rope_theta",
             "max_seq_len")


def _divisors(n: int) -> list[int]:
    """Divisors of n in order; empty above 2**24 (no model is that wide, and the search would be slow)."""
    if n > 1 << 24:
        return []
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _head_counts(dim: int, n_kv_heads: int) -> list[int]:
    """Head counts that fit `dim`: they divide it into even head sizes and are multiples of n_kv_heads."""
    return [h for h in _divisors(dim) if (dim // h) % 2 == 0 and h % n_kv_heads == 0]


def check_shape(values: Mapping[str, float], prefix: str = "") -> None:
    """Raise ModelShapeError for the first rule `values` (ModelArgs fields) break; keys are named `prefix`+field.

    Config validation calls it with prefix "model." on the preset merged with the user's overrides, so the
    message names the keys the user writes; ModelArgs calls it on itself.
    """
    for name in _POSITIVE:
        if not values[name] > 0:
            raise ModelShapeError(f"{prefix}{name}={values[name]} must be > 0")
    dim, heads, kv = values["dim"], values["n_heads"], values["n_kv_heads"]
    if dim % heads or (dim // heads) % 2:
        why = (f"does not divide {prefix}dim={dim}" if dim % heads else
               f"gives an odd head size {prefix}dim/{prefix}n_heads={dim // heads} (RoPE rotates pairs of channels)")
        fits = _head_counts(dim, kv)
        fix = (f"set {prefix}n_heads to one of {_few(fits, heads)} (divisors of {prefix}dim with an even head size, "
               f"multiples of {prefix}n_kv_heads={kv})" if fits else
               # n_heads = n_kv_heads always fits a dim that is a multiple of 2·n_kv_heads
               f"no head count fits; set {prefix}dim to a multiple of {2 * kv}, e.g. {_round_to(dim, 2 * kv)}")
        raise ModelShapeError(f"{prefix}n_heads={heads} {why}; {fix}")
    if heads % kv:
        fits = _divisors(heads) or [1]
        raise ModelShapeError(f"{prefix}n_kv_heads={kv} does not divide {prefix}n_heads={heads} (each KV head serves "
                              f"a whole group of query heads); set {prefix}n_kv_heads to one of {_few(fits, kv)}")


def _round_to(value: int, step: int) -> int:
    """The multiple of `step` nearest `value` (at least `step`)."""
    return max(step, round(value / step) * step)


def _few(choices: list[int], near: float) -> str:
    """Up to six of `choices`, those nearest `near`, in order."""
    return ", ".join(map(str, sorted(sorted(choices, key=lambda c: abs(c - near))[:6])))


@dataclass(frozen=True)
class ModelArgs:
    """Shape of an Apertus-style decoder. Everything that changes a weight shape lives here."""

    vocab_size: int = 131_072
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn_multiplier: float = 5.25  # non-gated MLP: d_ffn = 5.25·d (Apertus)
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    max_seq_len: int = 4096  # longest sequence the RoPE table covers

    def __post_init__(self) -> None:
        check_shape(dataclasses.asdict(self))

    @property
    def head_dim(self) -> int:
        """Per-head width: dim / n_heads."""
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """MLP hidden width: 5.25·dim for Apertus."""
        return int(self.ffn_multiplier * self.dim)

    def replace(self, **changes) -> "ModelArgs":
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def shape_dict(self) -> dict:
        """The fields that decide weight shapes and numerics: compared when a checkpoint is loaded."""
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelArgs] = {
    # ~3.3 M params; trains 20 steps of 8×128 tokens in a few seconds on 2 CPU cores.
    "tiny": ModelArgs(vocab_size=8192, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                      rope_theta=10_000.0, max_seq_len=512),
    # 124 M non-embedding params (GPT-2-small class), 0.33 B with the 131k embeddings.
    "125m": ModelArgs(dim=768, n_layers=16, n_heads=12, n_kv_heads=4, max_seq_len=2048),
    # 0.91 B non-embedding params, 1.44 B in total.
    "1b": ModelArgs(dim=2048, n_layers=16, n_heads=16, n_kv_heads=8, max_seq_len=4096),
    # Apertus-8B: 8.05 B params.
    "8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, max_seq_len=4096),
    # Apertus-70B: 70.6 B params.
    "70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, max_seq_len=4096),
}


def get_preset(name: str) -> ModelArgs:
    """The preset called `name`; KeyError lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None


def count_params(args: ModelArgs, *, embeddings: bool = True) -> int:
    """Analytic parameter count (matches `sum(p.numel())` of `Transformer(args)`)."""
    d, hd = args.dim, args.head_dim
    attn = d * args.n_heads * hd * 2 + d * args.n_kv_heads * hd * 2 + 2 * hd  # wq, wo, wk, wv, q/k norms
    mlp = 2 * d * args.ffn_dim + 2  # w_up, w_down, xIELU (alpha_p, alpha_n)
    layer = attn + mlp + 2 * d  # + two RMSNorm weights
    total = args.n_layers * layer + d  # + final norm
    if embeddings:
        total += 2 * args.vocab_size * d  # untied input embedding and output head
    return total


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOP per token ≈ 6·N(non-embedding) + 12·L·H·Q·T (PaLM appendix B).

    The 6·N term counts the matmuls of forward + backward; the output head is a matmul too, so it is
    counted (only the embedding lookup is free). 12·L·H·Q·T is the attention score and value products.
    """
    n = count_params(args, embeddings=False) + args.vocab_size * args.dim  # + output head matmul
    return 6 * n + 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
