"""Weighted blend of several datasets, as Megatron-LM's BlendedDataset builds it.

Sample i of the blend goes to the dataset that lags furthest behind its share: the one maximising
`weight · max(i, 1) − samples taken so far`, the first on a tie. The choice is deterministic (no random
draw), the datasets interleave finely, and after n samples every dataset holds its share of n to within
two samples. The per-dataset order is each dataset's own (already shuffled) order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetConfigError


def normalize_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """Weights as float64 summing to 1, or DatasetConfigError naming what is wrong with them."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise DatasetConfigError(f"{len(w)} blend weights for {count} datasets: give one weight per dataset")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise DatasetConfigError(f"blend weights {list(weights)} must be finite, >= 0 and not all 0")
    return w / w.sum()


def build_blend_indices(weights: np.ndarray, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, sample index within that dataset) for each of the blend's samples.

    Megatron runs this loop in C++; in Python it costs about 1 s per million samples, which
    `BlendedDataset` pays once and then caches.
    """
    w = [float(x) for x in weights]
    taken = [0] * len(w)
    choice = [0] * num_samples
    position = [0] * num_samples
    for i in range(num_samples):
        n = i if i > 0 else 1
        best, best_err = 0, w[0] * n - taken[0]
        for j in range(1, len(w)):
            err = w[j] * n - taken[j]
            if err > best_err:
                best, best_err = j, err
        choice[i], position[i] = best, taken[best]
        taken[best] += 1
    return np.array(choice, dtype=np.int16), np.array(position, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _build_cached(weights: tuple[float, ...], num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    # Memoised so that sizing the datasets and then blending them builds the indices once per process.
    arrays = build_blend_indices(np.array(weights), num_samples)
    for array in arrays:
        array.setflags(write=False)  # shared between callers
    return arrays


def blend_indices(
    weights: np.ndarray, num_samples: int, cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`build_blend_indices`, memoised in-process and, with `cache_dir`, stored as `.npy` across runs."""
    if cache_dir is None:
        return _build_cached(tuple(float(x) for x in weights), num_samples)
    desc = {"class": "BlendedDataset", "weights": [float(x) for x in weights], "num_samples": num_samples}
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]
    paths = [Path(cache_dir) / f"blend-{key}-{name}.npy" for name in ("dataset_index", "dataset_sample_index")]
    try:
        arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
        if len(arrays[0]) == len(arrays[1]) == num_samples:
            return arrays[0], arrays[1]
    except (OSError, ValueError):
        pass  # absent or unreadable: build afresh and overwrite
    arrays = _build_cached(tuple(float(x) for x in weights), num_samples)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, array in zip(paths, arrays, strict=True):
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    return arrays


def samples_per_dataset(weights: np.ndarray, num_samples: int, cache_dir: str | os.PathLike | None = None) -> list[int]:
    """How many samples the blend takes from each dataset (build each dataset with at least that many)."""
    choice, _ = blend_indices(weights, num_samples, cache_dir)
    return np.bincount(choice, minlength=len(weights)).tolist()


class BlendedDataset:
    """`num_samples` samples interleaved from `datasets` in proportion to `weights`.

    Each dataset must hold at least its share (see `samples_per_dataset`). With `cache_dir` the two
    index arrays are saved as `.npy` and memory-mapped on later runs.
    """

    def __init__(
        self,
        datasets: Sequence,
        weights: Sequence[float],
        num_samples: int,
        cache_dir: str | os.PathLike | None = None,
    ):
        if not datasets:
            raise DatasetConfigError("a blend needs at least one dataset")
        if num_samples < 1:
            raise DatasetConfigError(f"num_samples ({num_samples}) must be >= 1")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights, len(self.datasets))
        self.num_samples = num_samples
        self.dataset_index, self.dataset_sample_index = blend_indices(self.weights, num_samples, cache_dir)
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for ds, need in zip(self.datasets, counts, strict=True):
            if len(ds) < need:
                raise DatasetConfigError(
                    f"blend takes {need} samples from dataset {getattr(ds, 'indexed', ds)!r} which has only "
                    f"{len(ds)}; build it with num_samples >= {need} (see samples_per_dataset)"
                )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples} samples")
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]
