"""The trainer's data pipeline: Megatron `.bin/.idx` datasets, GPT samples, blends, Goldfish mask.

The training loop codes against `build_train_dataset` and `goldfish_mask`; everything else is here for
tools and tests. Importing this package does not import torch (the tokenizer CLI and its worker
processes stay light); `goldfish_mask` loads torch on first use.
"""

from __future__ import annotations

import os

from .blend import BlendedDataset, normalize_weights, samples_per_dataset
from .errors import (
    DataError,
    DatasetConfigError,
    DatasetFormatError,
    DatasetNotFoundError,
    TokenizeInputError,
)
from .gpt import GPTDataset
from .indexed import IndexedDataset, IndexedDatasetWriter, optimal_dtype

__all__ = [
    "BlendedDataset",
    "DataError",
    "DatasetConfigError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "GPTDataset",
    "IndexedDataset",
    "IndexedDatasetWriter",
    "TokenizeInputError",
    "build_train_dataset",
    "goldfish_mask",
    "optimal_dtype",
]


def __getattr__(name: str):
    # Lazy: goldfish needs torch, which the tokenizer's worker processes should not pay for.
    if name == "goldfish_mask":
        from .goldfish import goldfish_mask

        return goldfish_mask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_train_dataset(
    paths: list[str],
    weights: list[float] | None,
    seq_len: int,
    num_samples: int,
    seed: int,
    cache_dir: str | None = None,
) -> GPTDataset | BlendedDataset:
    """The training dataset: `num_samples` samples, each an np.int64 array of `seq_len + 1` tokens.

    Args:
        paths: dataset prefixes (without `.bin`/`.idx`).
        weights: blend weights, one per path; None weighs each dataset by its token count.
        seq_len: tokens of model input per sample (a sample holds one more: the last label).
        num_samples: samples to draw; datasets repeat in reshuffled epochs when they are too small.
        seed: seeds the document and sample shuffles; the same seed gives the same samples.
        cache_dir: where index arrays are cached as `.npy` and reused; None builds them in memory.

    Raises:
        DatasetNotFoundError: a prefix lacks its `.bin` or `.idx`.
        DatasetFormatError: a `.bin`/`.idx` pair is truncated or corrupt.
        DatasetConfigError: bad weights, sizes, or an empty dataset.
    """
    if isinstance(paths, (str, os.PathLike)) or not paths:
        raise DatasetConfigError(f"paths must be a non-empty list of dataset prefixes, got {paths!r}")
    indexed = [IndexedDataset(p) for p in paths]
    for ds in indexed:
        if ds.num_tokens == 0:
            raise DatasetConfigError(f"dataset {ds.prefix} holds no tokens; tokenize non-empty documents")
    if weights is None:
        weights = [float(ds.num_tokens) for ds in indexed]
    normalized = normalize_weights(weights, len(indexed))
    if len(indexed) == 1:
        return GPTDataset(indexed[0], seq_len, num_samples, seed, cache_dir)
    counts = samples_per_dataset(normalized, num_samples, cache_dir)
    # A dataset the blend never draws from still gets one sample, so that every path is validated.
    parts = [GPTDataset(ds, seq_len, max(n, 1), seed, cache_dir) for ds, n in zip(indexed, counts, strict=True)]
    return BlendedDataset(parts, normalized, num_samples, cache_dir)
