"""Weighted blends: counts track the weights at every prefix, deterministic, right datasets sampled."""

import numpy as np
import pytest

from workloads.trainer.data import (
    BlendedDataset,
    DatasetConfigError,
    IndexedDatasetWriter,
    build_train_dataset,
)
from workloads.trainer.data.blend import build_blend_indices


def megatron_blend(weights, size):
    """Megatron's helpers.cpp build_blending_indices as a plain loop (the reference)."""
    current = np.zeros(len(weights))
    index, sample = np.zeros(size, np.int64), np.zeros(size, np.int64)
    for i in range(size):
        errors = weights * max(i, 1) - current
        j = int(np.argmax(errors))
        index[i], sample[i] = j, current[j]
        current[j] += 1
    return index, sample


@pytest.mark.parametrize("weights", [[0.2, 0.3, 0.5], [0.7, 0.3], [0.01, 0.01, 0.98], [1 / 3] * 3])
def test_blend_indices_equal_megatron_and_track_weights_at_every_prefix(weights):
    w = np.array(weights) / sum(weights)
    index, sample = build_blend_indices(w, 2000)
    ref_index, ref_sample = megatron_blend(w, 2000)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(sample, ref_sample)
    counts = np.cumsum(np.eye(len(w), dtype=np.int64)[index], axis=0)  # (n, datasets) running counts
    ideal = np.arange(1, 2001)[:, None] * w[None, :]
    assert np.abs(counts - ideal).max() < 2.0
    # Within a dataset, samples are taken in order 0, 1, 2, ...
    for j in range(len(w)):
        np.testing.assert_array_equal(sample[index == j], np.arange((index == j).sum()))


def write(prefix, n_docs, offset):
    rng = np.random.default_rng(offset)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for _ in range(n_docs):
            w.add_document(rng.integers(offset, offset + 100, 50))


def test_build_train_dataset_blends_by_weight(tmp_path):
    write(tmp_path / "a", 40, 0)  # tokens < 100
    write(tmp_path / "b", 40, 1000)  # tokens >= 1000: each sample says where it came from
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    ds = build_train_dataset(paths, [1.0, 3.0], seq_len=16, num_samples=400, seed=3, cache_dir=str(tmp_path / "c"))
    assert isinstance(ds, BlendedDataset) and len(ds) == 400
    from_b = [int(ds[i].min() >= 1000) for i in range(400)]
    assert all(ds[i].max() < 100 or ds[i].min() >= 1000 for i in range(400))  # never mixed
    assert sum(from_b) == 300
    again = build_train_dataset(paths, [1.0, 3.0], seq_len=16, num_samples=400, seed=3, cache_dir=str(tmp_path / "c"))
    assert all(np.array_equal(ds[i], again[i]) for i in range(400))


def test_weights_default_to_token_counts(tmp_path):
    write(tmp_path / "a", 10, 0)
    write(tmp_path / "b", 30, 1000)
    ds = build_train_dataset([str(tmp_path / "a"), str(tmp_path / "b")], None, 16, 100, seed=0)
    np.testing.assert_allclose(ds.weights, [0.25, 0.75])


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [float("nan"), 1.0]])
def test_bad_weights_raise_config_error(tmp_path, weights):
    write(tmp_path / "a", 5, 0)
    write(tmp_path / "b", 5, 1000)
    with pytest.raises(DatasetConfigError, match="weight"):
        build_train_dataset([str(tmp_path / "a"), str(tmp_path / "b")], weights, 16, 10, seed=0)


def test_blend_refuses_a_dataset_smaller_than_its_share():
    with pytest.raises(DatasetConfigError, match="num_samples >= 50"):
        BlendedDataset([list(range(10)), list(range(100))], [0.5, 0.5], 100)
