"""Goldfish loss mask (Hans et al., arXiv 2406.10209; Apertus uses k = 50, h = 50).

A label is dropped from the loss when a hash of the h tokens ending at it falls below 1/k. The hash
depends on those h tokens only — not on the position, the batch, the process or the run — so a passage
seen many times always loses the same labels and cannot be memorised verbatim, while about 1/k of all
labels are dropped overall.

The hash is a polynomial rolling hash modulo the Mersenne prime 2^31 - 1, followed by an integer
finaliser; every product stays below 2^62, so int64 tensors compute it exactly on any device, without
the overflow that a 64-bit multiplicative hash would need. Python's `hash()` is salted per process and
is never used.
"""

from __future__ import annotations

import functools

import torch

_P = 2**31 - 1  # Mersenne prime: residues fit in 31 bits, so a product of two fits in int64
_A, _C = 1_234_567_891, 362_436_069  # per-token affine scramble (a bijection mod p since A != 0)
_B = 1_580_030_173  # polynomial base of the rolling hash
_B_INV = pow(_B, _P - 2, _P)  # its inverse mod p (Fermat), to slide windows with prefix sums
_M1, _M2 = 739_982_445, 695_872_825  # finaliser multipliers: spread nearby hash values apart


def _pow_mod(base: int, exponents: torch.Tensor) -> torch.Tensor:
    """base**e mod p for every e in `exponents` (int64, < 2^31) by square-and-multiply over the bits."""
    result = torch.ones_like(exponents)
    square = torch.full_like(exponents, base % _P)
    for bit in range(31):
        odd = (exponents >> bit) & 1 == 1
        result = torch.where(odd, result * square % _P, result)
        square = square * square % _P
    return result


@functools.lru_cache(maxsize=8)
def _powers(T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B^-t, B^t) mod p for t < T; cached because every batch of a run has the same T."""
    pos = torch.arange(T, device=device, dtype=torch.int64)
    return _pow_mod(_B_INV, pos), _pow_mod(_B, pos)


def _finalise(v: torch.Tensor) -> torch.Tensor:
    """Non-linear mix of 31-bit values (xor-shift and multiply), so that structured inputs hash uniformly."""
    v = v ^ (v >> 15)
    v = v * _M1 % _P
    v = v ^ (v >> 13)
    v = v * _M2 % _P
    return v ^ (v >> 16)


def hgram_hash(tokens: torch.Tensor, h: int) -> torch.Tensor:
    """31-bit hash of the h tokens ending at each position of the last dimension (T).

    Positions t < h - 1 have no full window; their value is meaningless (the mask keeps them).
    """
    x = tokens.to(torch.int64)
    inv_pows, pows = _powers(x.shape[-1], x.device)
    a = (torch.remainder(x, _P) * _A + _C) % _P  # (..., T)
    # S_t = sum_{i<=t} a_i B^-i: a window sum times B^t is sum_{t-h<i<=t} a_i B^(t-i), the rolling hash.
    # Each term < 2^31, so the running sum stays exact in int64 for any T < 2^32.
    prefix = torch.cumsum(a * inv_pows % _P, dim=-1)
    window = prefix.clone()
    window[..., h:] -= prefix[..., :-h]
    return _finalise(torch.remainder(window, _P) * pows % _P)


def goldfish_mask(tokens: torch.Tensor, k: int | None, h: int) -> torch.Tensor:
    """Boolean mask (B, T) of the labels to keep in the loss; False = dropped by the Goldfish rule.

    Args:
        tokens: (B, T) integer labels, the tensor passed to the cross-entropy as targets.
        k: drop about one label in k; 0 or None disables the mask (all True).
        h: context width: the h tokens ending at a label decide whether it is dropped; the first h - 1
            labels of every row are always kept.
    """
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"goldfish_mask needs integer token ids, got {tokens.dtype}")
    keep = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
    if not k:
        return keep
    if k < 0 or h < 1:
        raise ValueError(f"goldfish needs k >= 1 (or 0 to disable) and h >= 1, got k={k}, h={h}")
    if tokens.shape[-1] < h:
        return keep
    # Drop when hash / 2^31 < 1 / k, compared exactly in integers.
    drop = hgram_hash(tokens, h) * k < 2**31
    drop[..., : h - 1] = False
    return ~drop
