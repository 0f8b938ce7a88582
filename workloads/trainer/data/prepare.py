"""The bundled sample as files: JSONL / Parquet documents and a tokenized `.bin/.idx` dataset.

Used by the `tiny` training preset, the demo and the tests; nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workloads.trainer.assets.build_tokenizer import SAMPLE_TEXT, TOKENIZER_JSON, sample_documents

from .errors import DataError
from .indexed import IndexedDataset

SAMPLE_PREFIX_NAME = "sample"


def write_sample_jsonl(path: str | os.PathLike, repeat: int = 1) -> Path:
    """Write the sample's documents (`repeat` times over) as JSON Lines `{"id": ..., "text": ...}`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = sample_documents()
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeat):
            for i, text in enumerate(docs):
                f.write(json.dumps({"id": f"{r}-{i}", "text": text}, ensure_ascii=False) + "\n")
    return path


def write_sample_parquet(path: str | os.PathLike, repeat: int = 1, row_group_size: int = 64) -> Path:
    """Write the same documents as `write_sample_jsonl` into a Snappy-compressed Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = sample_documents()
    ids = [f"{r}-{i}" for r in range(repeat) for i in range(len(docs))]
    table = pa.table({"id": ids, "text": docs * repeat})
    pq.write_table(table, path, compression="snappy", row_group_size=row_group_size)
    return path


def _assets_digest() -> str:
    h = hashlib.sha256()
    for path in (SAMPLE_TEXT, TOKENIZER_JSON):
        h.update(path.read_bytes())
    return h.hexdigest()


def prepare_sample_dataset(out_dir: str | os.PathLike) -> str:
    """Tokenize the bundled sample into `out_dir/sample.bin/.idx` and return the prefix.

    Idempotent: a stamp beside the dataset records the digest of sample.txt and tokenizer.json, and the
    dataset is rebuilt only when they changed or the files do not load. About a second on one core.
    """
    from workloads.trainer.tokenize import tokenize_files

    out_dir = Path(out_dir)
    prefix = out_dir / SAMPLE_PREFIX_NAME
    stamp = out_dir / f"{SAMPLE_PREFIX_NAME}.stamp.json"
    digest = _assets_digest()
    try:
        if json.loads(stamp.read_text())["assets_sha256"] == digest:
            IndexedDataset(prefix)
            return str(prefix)
    except (OSError, ValueError, KeyError, DataError):
        pass  # no stamp, stale stamp or unreadable dataset: rebuild
    # Private names for the intermediate files: two processes preparing the same folder at once each
    # write their own, and the dataset and stamp land by atomic renames.
    jsonl = write_sample_jsonl(out_dir / f"{SAMPLE_PREFIX_NAME}.jsonl.tmp-{os.getpid()}.jsonl")
    try:
        stats = tokenize_files([jsonl], TOKENIZER_JSON, prefix, workers=1)
    finally:
        jsonl.unlink()
    tmp = stamp.with_name(f"{stamp.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"assets_sha256": digest, "documents": stats.documents, "tokens": stats.tokens}))
    os.replace(tmp, stamp)
    return str(prefix)
