"""GPT sample indices: Megatron's algorithm, reproducibility, caching, and the build_train_dataset entry."""

import numpy as np
import pytest

from workloads.trainer.data import (
    DatasetConfigError,
    DatasetNotFoundError,
    GPTDataset,
    IndexedDataset,
    IndexedDatasetWriter,
    build_train_dataset,
)
from workloads.trainer.data.gpt import build_sample_index, num_epochs_needed


def make_dataset(prefix, lengths, seed=0, offset=0):
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for n in lengths:
            w.add_document(rng.integers(offset, offset + 1000, n))
    return IndexedDataset(prefix)


def megatron_sample_index(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """Megatron's helpers.cpp build_sample_idx, transcribed as a plain loop (the reference)."""
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros((num_samples + 1, 2), np.int64)
    doc_idx_index, doc_offset = 0, 0
    for s in range(1, num_samples + 1):
        remaining = seq_length + 1
        while remaining != 0:
            doc_length = sizes[doc_idx[doc_idx_index]] - doc_offset
            remaining -= doc_length
            if remaining <= 0:
                doc_offset += remaining + doc_length - 1
                remaining = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        sample_idx[s] = doc_idx_index, doc_offset
    return sample_idx


@pytest.mark.parametrize("seq_len", [1, 7, 64, 333])
def test_sample_index_equals_megatron_loop(seq_len):
    rng = np.random.default_rng(seq_len)
    lengths = rng.integers(0, 120, 60).astype(np.int32)  # zeros included: empty documents are skipped
    doc_index = np.concatenate([rng.permutation(60), rng.permutation(60)])
    total = 2 * int(lengths.sum())
    ours = build_sample_index(lengths, doc_index, seq_len, total)
    np.testing.assert_array_equal(ours, megatron_sample_index(lengths, doc_index, seq_len, 2, int(lengths.sum())))


def test_each_sample_is_the_next_window_of_the_shuffled_document_stream(tmp_path):
    ds = make_dataset(tmp_path / "d", [50, 0, 3, 200, 17, 1, 90])
    gpt = GPTDataset(ds, seq_len=32, num_samples=40, seed=5)  # > 1 epoch: 361 tokens per epoch
    stream = np.concatenate([ds[int(d)] for d in gpt.document_index]).astype(np.int64)
    for i in range(len(gpt)):
        j = int(gpt.shuffle_index[i])
        sample = gpt[i]
        assert sample.dtype == np.int64 and sample.shape == (33,)
        np.testing.assert_array_equal(sample, stream[j * 32 : j * 32 + 33])


def test_epochs_cover_every_document_once_each(tmp_path):
    ds = make_dataset(tmp_path / "d", [40] * 25)  # 1000 tokens per epoch
    gpt = GPTDataset(ds, seq_len=100, num_samples=25, seed=1)  # 2501 tokens: 3 epochs
    assert num_epochs_needed(1000, 100, 25) == 3
    counts = np.bincount(gpt.document_index, minlength=25)
    assert (counts == 3).all()
    # The third epoch is needed for under 80 % of its samples: Megatron shuffles it on its own.
    assert sorted(gpt.document_index[50:]) == list(range(25))


def test_same_seed_same_samples_other_seed_other_samples(tmp_path):
    ds = make_dataset(tmp_path / "d", np.random.default_rng(3).integers(1, 80, 100))
    a, b = GPTDataset(ds, 16, 100, seed=7), GPTDataset(ds, 16, 100, seed=7)
    c = GPTDataset(ds, 16, 100, seed=8)
    assert all(np.array_equal(a[i], b[i]) for i in range(100))
    assert not all(np.array_equal(a[i], c[i]) for i in range(100))


def test_cached_indices_are_reused_and_keyed_by_seed(tmp_path):
    ds = make_dataset(tmp_path / "d", np.random.default_rng(4).integers(1, 80, 100))
    first = GPTDataset(ds, 16, 200, seed=1, cache_dir=tmp_path / "cache")
    assert not first.loaded_from_cache
    mtimes = {p: p.stat().st_mtime_ns for p in first.cache_paths.values()}
    second = GPTDataset(ds, 16, 200, seed=1, cache_dir=tmp_path / "cache")
    assert second.loaded_from_cache
    assert {p: p.stat().st_mtime_ns for p in second.cache_paths.values()} == mtimes
    assert all(np.array_equal(first[i], second[i]) for i in range(200))
    other = GPTDataset(ds, 16, 200, seed=2, cache_dir=tmp_path / "cache")
    assert not other.loaded_from_cache and set(other.cache_paths.values()).isdisjoint(mtimes)


def test_build_train_dataset_single_path(tmp_path):
    make_dataset(tmp_path / "d", [300] * 10)
    ds = build_train_dataset([str(tmp_path / "d")], None, seq_len=64, num_samples=123, seed=0)
    assert len(ds) == 123
    assert {ds[i].shape for i in range(123)} == {(65,)} and ds[0].dtype == np.int64


def test_missing_path_raises_dataset_not_found_naming_it(tmp_path):
    missing = str(tmp_path / "nope" / "web")
    with pytest.raises(FileNotFoundError) as err:
        build_train_dataset([missing], None, 64, 10, 0)
    assert isinstance(err.value, DatasetNotFoundError)
    assert missing in str(err.value) and "workloads.trainer.tokenize" in str(err.value)


def test_bad_request_raises_config_error(tmp_path):
    make_dataset(tmp_path / "d", [10])
    with pytest.raises(DatasetConfigError):
        build_train_dataset([str(tmp_path / "d")], None, seq_len=0, num_samples=10, seed=0)
    with pytest.raises(DatasetConfigError):
        build_train_dataset(str(tmp_path / "d"), None, seq_len=8, num_samples=10, seed=0)
    make_dataset(tmp_path / "empty", [0, 0])
    with pytest.raises(DatasetConfigError, match="no tokens"):
        build_train_dataset([str(tmp_path / "empty")], None, seq_len=8, num_samples=10, seed=0)


def megatron_indices(sizes, seq_length, num_samples, seed):
    """Megatron's GPTDataset index construction (document, sample, shuffle), transcribed step by step."""
    tokens_per_epoch = int(sizes.sum())
    num_epochs, num_tokens = 1, tokens_per_epoch
    while num_tokens < num_samples * seq_length + 1:
        num_epochs += 1
        num_tokens += tokens_per_epoch
    separate = False
    if num_epochs > 1:
        sans = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
        per_epoch = (tokens_per_epoch - 1) // seq_length
        separate = num_samples - sans < int(0.80 * per_epoch)
    rng = np.random.RandomState(seed)

    def doc_index(epochs):
        idx = np.mgrid[0:epochs, 0 : len(sizes)][1].reshape(-1).astype(np.int32)
        rng.shuffle(idx)
        return idx

    docs = np.concatenate([doc_index(num_epochs - 1), doc_index(1)]) if separate else doc_index(num_epochs)
    samples = megatron_sample_index(sizes, docs, seq_length, num_epochs, tokens_per_epoch)
    total = len(samples) - 1
    first_size = sans if separate else total
    first = np.arange(first_size, dtype=np.uint32)
    rng.shuffle(first)
    last = np.arange(first_size, total, dtype=np.uint32)
    rng.shuffle(last)
    return docs, samples, np.concatenate([first, last])


@pytest.mark.parametrize("num_samples", [5, 60, 65, 130])  # 1 epoch; 2 with and without a separate last; 4
def test_indices_equal_megatron_reference(tmp_path, num_samples):
    ds = make_dataset(tmp_path / "d", np.random.default_rng(9).integers(0, 60, 40))
    gpt = GPTDataset(ds, 40, num_samples, seed=1234)
    for ours, theirs in zip(
        (gpt.document_index, gpt.sample_index, gpt.shuffle_index),
        megatron_indices(ds.sequence_lengths, 40, num_samples, 1234),
        strict=True,
    ):
        np.testing.assert_array_equal(ours, theirs)
