"""Megatron-compatible indexed dataset: a memory-mapped reader and an atomic writer of `.bin`/`.idx`.

`.bin` holds token ids back to back with no header. `.idx` is little-endian:

    magic  b"MMIDIDX\\x00\\x00"   9 B
    version          <Q = 1
    dtype code       <B   (uint8=1 int8=2 int16=3 int32=4 int64=5 float64=6 float32=7 uint16=8)
    sequence count   <Q   S
    document count   <Q   D (= documents + 1)
    lengths          int32[S]   tokens per sequence
    pointers         int64[S]   byte offset of each sequence in `.bin`
    document indices int64[D]   sequence index where each document starts; 0 first, S last

Files written here are byte-for-byte what Megatron-LM's `IndexedDatasetBuilder` writes (one sequence per
document), so datasets move between the two trainers both ways.
"""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

import numpy as np

from .errors import DatasetFormatError, DatasetNotFoundError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
_CHECK_CHUNK = 1 << 20  # sequences validated per step: bounds the temporary memory of the pointer check


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Token dtype Megatron picks for a vocabulary: uint16 below 65,500 entries, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dataset_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """The `(.idx, .bin)` paths of a dataset prefix."""
    prefix = os.fspath(prefix)
    return Path(prefix + ".idx"), Path(prefix + ".bin")


class IndexedDataset:
    """Read-only, memory-mapped view of a `.bin`/`.idx` pair; `ds[i]` is sequence `i` as a numpy array.

    Opening validates the whole index (header, sizes, pointers against the `.bin` size) so that a torn or
    mismatched pair fails here, with the file named, and never as garbage tokens mid-training.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.idx_path, self.bin_path = dataset_paths(self.prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"dataset {self.prefix!r}: {path} does not exist; pass the prefix without .bin/.idx "
                    "and create the pair with `python -m workloads.trainer.tokenize`"
                )
        idx_size = self.idx_path.stat().st_size
        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            self._fail(self.idx_path, f"truncated: {idx_size} bytes, shorter than the {HEADER.size}-byte header")
        magic, version, code, n_seq, n_doc = HEADER.unpack(head)
        if magic != MAGIC:
            self._fail(self.idx_path, f"bad magic {magic!r}, expected {MAGIC!r}: not a Megatron .idx file")
        if version != VERSION:
            self._fail(self.idx_path, f"index version {version}, only version {VERSION} is supported")
        if code not in DTYPE_CODES:
            self._fail(self.idx_path, f"unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self.dtype = DTYPE_CODES[code]
        expected = HEADER.size + n_seq * (4 + 8) + n_doc * 8
        if idx_size != expected:
            what = "truncated" if idx_size < expected else f"{idx_size - expected} trailing bytes"
            self._fail(
                self.idx_path,
                f"{what}: {idx_size} bytes, but {n_seq} sequences and {n_doc} document entries need {expected}",
            )
        # The header parsed, so the arrays fit: map them straight from the file.
        idx = np.memmap(self.idx_path, dtype=np.uint8, mode="r")
        off = HEADER.size
        self.sequence_lengths = np.frombuffer(idx, "<i4", n_seq, off)
        off += n_seq * 4
        self.sequence_pointers = np.frombuffer(idx, "<i8", n_seq, off)
        off += n_seq * 8
        self.document_indices = np.frombuffer(idx, "<i8", n_doc, off)
        self._idx_map = idx
        self._check_index(n_seq)
        bin_size = self.bin_path.stat().st_size
        want = self.num_tokens * self.dtype.itemsize
        if bin_size != want:
            what = "truncated" if bin_size < want else f"{bin_size - want} bytes longer than indexed"
            self._fail(
                self.bin_path,
                f"{what}: {bin_size} bytes, but {self.idx_path.name} indexes {self.num_tokens} tokens "
                f"of {self.dtype} ({want} bytes)",
            )
        # numpy cannot map an empty file; an empty dataset reads from an empty buffer instead.
        self._bin = np.memmap(self.bin_path, dtype=np.uint8, mode="r") if bin_size else np.empty(0, np.uint8)

    def _fail(self, path: Path, what: str) -> None:
        raise DatasetFormatError(
            f"{path}: {what}. The pair {self.prefix}.bin/.idx is corrupt or was not written completely; "
            "delete both files and tokenize again with `python -m workloads.trainer.tokenize`"
        )

    def _check_index(self, n_seq: int) -> None:
        """Lengths non-negative, pointers contiguous from 0, document indices 0..S non-decreasing."""
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        itemsize = self.dtype.itemsize
        total = 0
        for start in range(0, n_seq, _CHECK_CHUNK):
            chunk = lengths[start : start + _CHECK_CHUNK].astype(np.int64)
            if (chunk < 0).any():
                self._fail(self.idx_path, f"negative sequence length near sequence {start}")
            expected = (total + np.cumsum(chunk) - chunk) * itemsize
            bad = np.flatnonzero(pointers[start : start + _CHECK_CHUNK] != expected)
            if bad.size:
                i = start + int(bad[0])
                self._fail(
                    self.idx_path,
                    f"pointer of sequence {i} is {int(pointers[i])}, expected {int(expected[bad[0]])} "
                    "(sequences must lie back to back in the .bin)",
                )
            total += int(chunk.sum())
        self.num_tokens = total
        if docs.size == 0 or docs[0] != 0 or docs[-1] != n_seq or (np.diff(docs) < 0).any():
            self._fail(self.idx_path, f"document indices must rise from 0 to the sequence count {n_seq}")

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens `offset : offset + length` of sequence `i` (to its end when `length` is None), zero-copy."""
        size = int(self.sequence_lengths[i])
        if length is None:
            length = size - offset
        assert 0 <= offset and 0 <= length and offset + length <= size, (i, offset, length, size)
        start = int(self.sequence_pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, self.dtype, length, start)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences in {self.prefix}")
        return self.get(i % len(self))

    def __reduce__(self):
        # Re-open by prefix in the receiving process (DataLoader workers): pickling the maps would copy the files.
        return (IndexedDataset, (self.prefix,))

    @property
    def num_documents(self) -> int:
        """Number of documents (one less than the document-index entries)."""
        return len(self.document_indices) - 1

    def __repr__(self) -> str:
        return (
            f"IndexedDataset({self.prefix!r}, sequences={len(self)}, documents={self.num_documents}, "
            f"tokens={self.num_tokens}, dtype={self.dtype})"
        )


class IndexedDatasetWriter:
    """Streams documents into `<prefix>.bin` and writes `<prefix>.idx` on `finalize()`.

    Both files grow under temporary names and are renamed into place only once complete (`.bin` first,
    `.idx` last), so a crash never leaves a pair that loads. Use it as a context manager: an exception
    inside the block removes the temporary files and leaves any earlier dataset at `prefix` untouched.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type | str):
        self.prefix = os.fspath(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {self.dtype} has no Megatron code; use one of {list(CODE_OF_DTYPE)}")
        self.idx_path, self.bin_path = dataset_paths(self.prefix)
        # Remember the folders made here, so that abort() leaves the file system as it found it.
        self._made_dirs = [d for d in (self.bin_path.parent, *self.bin_path.parent.parents) if not d.exists()]
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + tag)
        self._bin_tmp = self.bin_path.with_name(self.bin_path.name + tag)
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[np.ndarray] = []
        self.num_documents = 0
        self.num_tokens = 0
        self._done = False

    def _cast(self, tokens: np.ndarray) -> np.ndarray:
        """Cast to the file dtype, refusing ids the dtype cannot hold (a silent wrap corrupts data)."""
        tokens = np.asarray(tokens)
        if tokens.dtype == self.dtype or tokens.size == 0:
            return tokens.astype(self.dtype, copy=False)
        if self.dtype.kind in "iu" and tokens.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < info.min or hi > info.max:
                raise ValueError(
                    f"{self.bin_path}: token ids span [{lo}, {hi}], outside {self.dtype} [{info.min}, {info.max}]; "
                    "write with a wider dtype (int32)"
                )
        return tokens.astype(self.dtype)

    def add_document(self, tokens) -> None:
        """Append one document (a 1-D sequence of token ids)."""
        tokens = self._cast(np.asarray(tokens).reshape(-1))
        self.add_documents(tokens, np.array([tokens.size], np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append many documents at once: `tokens` is their concatenation, `lengths` their sizes."""
        tokens = self._cast(np.asarray(tokens).reshape(-1))
        lengths = np.asarray(lengths, np.int64)
        assert int(lengths.sum()) == tokens.size, "lengths must add up to the number of tokens"
        if lengths.size and (lengths.min() < 0 or lengths.max() >= 2**31):
            raise ValueError(f"{self.bin_path}: a document length does not fit the int32 length field")
        self._bin.write(memoryview(np.ascontiguousarray(tokens)).cast("B"))
        self._lengths.append(lengths.astype(np.int32))
        self.num_documents += lengths.size
        self.num_tokens += tokens.size

    def finalize(self) -> None:
        """Write the index and move both files into place."""
        assert not self._done, "finalize() called twice"
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, np.int64)
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= self.dtype.itemsize
        n = lengths.size
        with open(self._idx_tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[self.dtype], n, n + 1))
            f.write(lengths.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(np.arange(n + 1, dtype="<i8").tobytes())  # one sequence per document
            f.flush()
            os.fsync(f.fileno())
        os.replace(self._bin_tmp, self.bin_path)
        os.replace(self._idx_tmp, self.idx_path)
        self._done = True

    def abort(self) -> None:
        """Drop everything written so far; the files at `prefix` (if any) stay as they were."""
        if self._done:
            return
        self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            path.unlink(missing_ok=True)
        for folder in self._made_dirs:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break  # no longer empty: someone else writes there too
        self._done = True

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._done:
            self.finalize()
        else:
            self.abort()
