"""GPT training samples over an indexed dataset, indexed as Megatron-LM builds them.

Three arrays turn "sample i" into token ranges:

- document index: every sequence id once per epoch, shuffled with `numpy.random.RandomState(seed)`;
- sample index `[n + 1, 2]`: (position in the document index, token offset) where sample j starts;
  sample j spans from entry j to entry j + 1 inclusive, i.e. `seq_len + 1` tokens (inputs plus the
  shifted labels), so consecutive samples share one boundary token;
- shuffle index: a permutation of the samples, drawn from the same random state.

When the last epoch is needed only in small part (under 80 % of an epoch's samples) it is shuffled apart
from the others, so that the partial epoch is a uniform draw rather than the head of one ordering. The
arrays equal Megatron's for the same lengths, seed, sequence length and sample count.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import DatasetConfigError
from .indexed import IndexedDataset

INDEX_VERSION = 1  # bump when the index layout or algorithm changes: old cache files stop matching
_ADD_EXTRA_TOKEN = 1  # each sample reads one token past seq_len: the label of its last position


def num_epochs_needed(tokens_per_epoch: int, seq_len: int, num_samples: int) -> int:
    """Smallest number of passes over the data that yields `num_samples` samples of `seq_len + 1` tokens."""
    needed = num_samples * seq_len + _ADD_EXTRA_TOKEN
    return max(1, -(-needed // tokens_per_epoch))


def build_document_index(num_docs: int, epochs: int, rng: np.random.RandomState, separate_final: bool) -> np.ndarray:
    """Sequence ids repeated `epochs` times and shuffled (the last epoch on its own if `separate_final`)."""
    if separate_final and epochs > 1:
        head = build_document_index(num_docs, epochs - 1, rng, False)
        tail = build_document_index(num_docs, 1, rng, False)
        return np.concatenate([head, tail])
    dtype = np.int32 if num_docs < 2**31 else np.int64
    index = np.tile(np.arange(num_docs, dtype=dtype), epochs)
    rng.shuffle(index)
    return index


def build_sample_index(lengths: np.ndarray, document_index: np.ndarray, seq_len: int, total_tokens: int) -> np.ndarray:
    """`[n + 1, 2]` array of (document-index position, offset) where each sample starts.

    Sample j starts at token j·seq_len of the document stream; the row points at the document holding
    that token (empty documents are skipped). Same result as Megatron's C++ loop, computed with one
    `searchsorted` instead of a walk over the documents.
    """
    sizes = lengths[document_index].astype(np.int64)
    starts = np.cumsum(sizes) - sizes  # (docs,) first token of each document in the stream
    n = (total_tokens - _ADD_EXTRA_TOKEN) // seq_len
    positions = np.arange(n + 1, dtype=np.int64) * seq_len
    doc = np.searchsorted(starts, positions, side="right") - 1
    return np.stack([doc, positions - starts[doc]], axis=1)


def build_shuffle_index(num_samples: int, total: int, rng: np.random.RandomState) -> np.ndarray:
    """Permutation of `range(total)` that shuffles `[0, num_samples)` and `[num_samples, total)` apart."""
    dtype = np.uint32 if total < 2**32 - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total:
        return first
    last = np.arange(num_samples, total, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate([first, last])


def build_indices(lengths: np.ndarray, seq_len: int, num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """(document index, sample index, shuffle index) for `num_samples` samples, as Megatron builds them."""
    tokens_per_epoch = int(lengths.sum(dtype=np.int64))
    epochs = num_epochs_needed(tokens_per_epoch, seq_len, num_samples)
    separate_final, sans_final = False, 0
    if epochs > 1:
        # Megatron's rule: a final epoch used for < 80 % of an epoch's samples is shuffled apart.
        sans_final = ((epochs - 1) * tokens_per_epoch - _ADD_EXTRA_TOKEN) // seq_len
        per_epoch = (tokens_per_epoch - _ADD_EXTRA_TOKEN) // seq_len
        separate_final = num_samples - sans_final < int(0.80 * per_epoch)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(len(lengths), epochs, rng, separate_final)
    sample_index = build_sample_index(lengths, document_index, seq_len, epochs * tokens_per_epoch)
    total = len(sample_index) - 1
    shuffle_index = build_shuffle_index(sans_final if separate_final else total, total, rng)
    return document_index, sample_index, shuffle_index


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save under a private name, then rename: concurrent ranks never read a half-written file."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class GPTDataset:
    """`num_samples` samples of `seq_len + 1` tokens (np.int64) drawn from one indexed dataset.

    With `cache_dir`, the three index arrays are stored as `.npy` under a name keyed by the dataset,
    its sequence lengths, `seq_len`, `num_samples` and `seed`, and memory-mapped back on the next run.
    """

    def __init__(
        self,
        indexed: IndexedDataset,
        seq_len: int,
        num_samples: int,
        seed: int,
        cache_dir: str | os.PathLike | None = None,
    ):
        if seq_len < 1 or num_samples < 1:
            raise DatasetConfigError(f"seq_len ({seq_len}) and num_samples ({num_samples}) must be >= 1")
        if indexed.num_tokens == 0:
            raise DatasetConfigError(f"dataset {indexed.prefix} holds no tokens; tokenize non-empty documents")
        self.indexed, self.seq_len, self.num_samples, self.seed = indexed, seq_len, num_samples, seed
        self.loaded_from_cache = False
        self.cache_paths: dict[str, Path] = {}
        if cache_dir is None:
            arrays = build_indices(indexed.sequence_lengths, seq_len, num_samples, seed)
        else:
            arrays = self._load_or_build(Path(cache_dir))
        self.document_index, self.sample_index, self.shuffle_index = arrays
        assert len(self.shuffle_index) >= num_samples, "index holds fewer samples than requested"

    def cache_key(self) -> str:
        """Hex digest naming this dataset's index files; changes with anything the indices depend on."""
        h = hashlib.sha256()
        h.update(json.dumps(self.description(), sort_keys=True).encode())
        h.update(memoryview(np.ascontiguousarray(self.indexed.sequence_lengths)).cast("B"))
        return h.hexdigest()[:20]

    def description(self) -> dict:
        """What the indices were built from, stored beside the cache for a person to read."""
        return {
            "class": "GPTDataset",
            "index_version": INDEX_VERSION,
            "prefix": os.path.abspath(self.indexed.prefix),
            "sequences": len(self.indexed),
            "tokens": self.indexed.num_tokens,
            "seq_len": self.seq_len,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }

    def _load_or_build(self, cache_dir: Path) -> tuple[np.ndarray, ...]:
        stem = f"{Path(self.indexed.prefix).name}-{self.cache_key()}"
        names = ("document_index", "sample_index", "shuffle_index")
        self.cache_paths = {n: cache_dir / f"{stem}-{n}.npy" for n in names}
        try:
            arrays = tuple(np.load(self.cache_paths[n], mmap_mode="r", allow_pickle=False) for n in names)
            if arrays[1].ndim == 2 and len(arrays[2]) == len(arrays[1]) - 1:
                self.loaded_from_cache = True
                return arrays
        except (OSError, ValueError):
            pass  # absent or unreadable: build afresh and overwrite
        arrays = build_indices(self.indexed.sequence_lengths, self.seq_len, self.num_samples, self.seed)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name, array in zip(names, arrays, strict=True):
            _save_atomic(self.cache_paths[name], array)
        desc = cache_dir / f"{stem}-description.json"
        desc.write_text(json.dumps(self.description(), indent=2, sort_keys=True) + "\n")
        return arrays

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples} samples")
        j = int(self.shuffle_index[i])
        (d0, off0), (d1, off1) = self.sample_index[j], self.sample_index[j + 1]
        docs, get = self.document_index, self.indexed.get
        if d0 == d1:
            return get(int(docs[d0]), int(off0), int(off1 - off0) + 1).astype(np.int64)
        parts = [get(int(docs[d0]), int(off0))]
        parts += [get(int(docs[d])) for d in range(d0 + 1, d1)]
        parts.append(get(int(docs[d1]), 0, int(off1) + 1))
        return np.concatenate(parts).astype(np.int64, copy=False)
