"""The .bin/.idx format byte for byte (FACTS §4), round trips, and typed errors on corrupt files."""

import struct

import numpy as np
import pytest

from workloads.trainer.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    IndexedDataset,
    IndexedDatasetWriter,
    optimal_dtype,
)


def spec_idx(dtype_code, lengths, pointers, doc_indices):
    """The .idx bytes exactly as the spec lays them out, built by hand with struct."""
    s = len(lengths)
    out = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code)
    out += struct.pack("<Q", s) + struct.pack("<Q", len(doc_indices))
    out += struct.pack(f"<{s}i", *lengths) + struct.pack(f"<{s}q", *pointers)
    return out + struct.pack(f"<{len(doc_indices)}q", *doc_indices)


def write(prefix, docs, dtype):
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)


def test_uint16_files_match_the_spec_byte_for_byte(tmp_path):
    write(tmp_path / "d", [[1, 2, 3], [], [65535, 7]], np.uint16)
    assert (tmp_path / "d.idx").read_bytes() == spec_idx(8, [3, 0, 2], [0, 6, 6], [0, 1, 2, 3])
    assert (tmp_path / "d.bin").read_bytes() == struct.pack("<5H", 1, 2, 3, 65535, 7)


def test_int32_files_match_the_spec_byte_for_byte(tmp_path):
    write(tmp_path / "d", [[70000], [5, 131071]], np.int32)
    assert (tmp_path / "d.idx").read_bytes() == spec_idx(4, [1, 2], [0, 4], [0, 1, 2])
    assert (tmp_path / "d.bin").read_bytes() == struct.pack("<3i", 70000, 5, 131071)


def test_writer_then_reader_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 8192, rng.integers(0, 300)) for _ in range(200)]
    write(tmp_path / "d", docs, np.uint16)
    ds = IndexedDataset(tmp_path / "d")
    assert len(ds) == 200 and ds.dtype == np.uint16 and ds.num_documents == 200
    assert ds.num_tokens == sum(len(d) for d in docs)
    np.testing.assert_array_equal(ds.sequence_lengths, [len(d) for d in docs])
    np.testing.assert_array_equal(ds.document_indices, np.arange(201))
    for i in (0, 17, 199, -1):
        np.testing.assert_array_equal(ds[i], docs[i])
    np.testing.assert_array_equal(ds.get(5, 3, 4), docs[5][3:7])
    with pytest.raises(IndexError):
        ds[200]


def test_reader_accepts_megatron_documents_of_several_sequences(tmp_path):
    # Megatron's builder can group sequences into documents (sentence splitting): document_indices [0, 2, 3].
    (tmp_path / "m.idx").write_bytes(spec_idx(4, [2, 1, 3], [0, 8, 12], [0, 2, 3]))
    (tmp_path / "m.bin").write_bytes(struct.pack("<6i", 10, 11, 12, 13, 14, 15))
    ds = IndexedDataset(tmp_path / "m")
    assert ds.num_documents == 2 and ds.dtype == np.int32
    np.testing.assert_array_equal(ds[2], [13, 14, 15])


def test_optimal_dtype_follows_megatron_threshold():
    assert optimal_dtype(65499) == np.uint16
    assert optimal_dtype(65500) == np.int32


def test_writer_refuses_ids_the_dtype_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="outside uint16"):
        with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
            w.add_document(np.array([1, 70000], np.int64))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_dataset_and_leaves_no_temp_files(tmp_path):
    write(tmp_path / "d", [[1, 2]], np.uint16)
    before = (tmp_path / "d.idx").read_bytes(), (tmp_path / "d.bin").read_bytes()
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "d", np.uint16) as w:
            w.add_document([3, 4, 5])
            raise RuntimeError("crash mid-write")
    assert ((tmp_path / "d.idx").read_bytes(), (tmp_path / "d.bin").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin", "d.idx"]


def _good(tmp_path):
    write(tmp_path / "d", [[1, 2, 3], [4, 5]], np.uint16)
    return tmp_path / "d.idx", tmp_path / "d.bin"


def _set(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


CORRUPTIONS = {
    "empty idx": (lambda idx, bin_: idx.write_bytes(b""), "idx", "truncated"),
    "idx cut in the header": (lambda idx, bin_: idx.write_bytes(idx.read_bytes()[:20]), "idx", "truncated"),
    "idx cut in the arrays": (lambda idx, bin_: idx.write_bytes(idx.read_bytes()[:-5]), "idx", "truncated"),
    "idx with trailing bytes": (lambda idx, bin_: idx.write_bytes(idx.read_bytes() + b"\0"), "idx", "trailing"),
    "bad magic": (lambda idx, bin_: _set(idx, 0, b"NOTMAGIC!"), "idx", "bad magic"),
    "wrong version": (lambda idx, bin_: _set(idx, 9, struct.pack("<Q", 2)), "idx", "version 2"),
    "unknown dtype code": (lambda idx, bin_: _set(idx, 17, b"\x09"), "idx", "unknown dtype code 9"),
    "pointer off": (lambda idx, bin_: _set(idx, 34 + 8 + 8, struct.pack("<q", 4)), "idx", "pointer of sequence 1"),
    "negative length": (lambda idx, bin_: _set(idx, 34, struct.pack("<i", -1)), "idx", "negative"),
    "bad document indices": (lambda idx, bin_: _set(idx, 34 + 8 + 16 + 16, struct.pack("<q", 1)), "idx", "document"),
    "bin truncated": (lambda idx, bin_: bin_.write_bytes(bin_.read_bytes()[:-1]), "bin", "truncated"),
    "bin too long": (lambda idx, bin_: bin_.write_bytes(bin_.read_bytes() + b"\0\0"), "bin", "longer than indexed"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_pair_raises_format_error_naming_the_file(tmp_path, case):
    idx, bin_ = _good(tmp_path)
    corrupt, which, what = CORRUPTIONS[case]
    corrupt(idx, bin_)
    with pytest.raises(DatasetFormatError) as err:
        IndexedDataset(tmp_path / "d")
    message = str(err.value)
    assert str(idx if which == "idx" else bin_) in message
    assert what in message and "tokenize again" in message


def test_missing_bin_is_a_file_not_found_error_naming_the_path(tmp_path):
    idx, bin_ = _good(tmp_path)
    bin_.unlink()
    with pytest.raises(FileNotFoundError) as err:
        IndexedDataset(tmp_path / "d")
    assert isinstance(err.value, DatasetNotFoundError) and str(bin_) in str(err.value)


def test_failed_write_removes_the_folders_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "new" / "deeper" / "d", np.uint16) as w:
            w.add_document([1])
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_pickling_reopens_by_prefix_instead_of_copying_the_data(tmp_path):
    import pickle

    write(tmp_path / "d", [list(range(1000))] * 50, np.uint16)
    blob = pickle.dumps(IndexedDataset(tmp_path / "d"))
    assert len(blob) < 500
    np.testing.assert_array_equal(pickle.loads(blob)[3], np.arange(1000))
