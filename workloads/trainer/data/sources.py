"""Input shards of the tokenizer: find them, check them, and cut them into batches of documents.

Two formats: Parquet (pyarrow; Snappy or any codec pyarrow reads) and JSON Lines. Work is cut so that
the parent process does almost nothing per document: a Parquet batch travels to a worker as an Arrow
string array (pickled as raw buffers), a JSONL batch as the raw bytes of whole lines, which the worker
parses with Arrow's JSON reader. Every error names the file and, where it can, the line or row.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .errors import TokenizeInputError

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class Source:
    """One input shard: its path, format ("parquet" | "jsonl") and size in bytes."""

    path: Path
    format: str
    size: int


@dataclass(frozen=True)
class Batch:
    """Up to `shard_docs` documents of one shard; `payload` is an Arrow array or raw JSONL bytes."""

    path: str
    format: str
    first: int  # first row (Parquet) or line number (JSONL, 1-based) of the batch, for error messages
    payload: object
    nbytes: int  # share of the input file, for the progress bar


def resolve_inputs(patterns: Sequence[str]) -> list[Source]:
    """Expand glob patterns (sorted), keep order and drop repeats; every match must be a known format."""
    sources, seen = [], set()
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise TokenizeInputError(f"input pattern {pattern!r} matches no file; check the path and quoting")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise TokenizeInputError(f"input file {path} does not exist; pass existing .parquet/.jsonl shards")
            fmt = FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise TokenizeInputError(
                    f"input file {path}: unknown format {path.suffix!r}; use Parquet (.parquet, .pq) "
                    "or JSON Lines (.jsonl, .ndjson, .json)"
                )
            if path.resolve() not in seen:
                seen.add(path.resolve())
                sources.append(Source(path, fmt, path.stat().st_size))
    if not sources:
        raise TokenizeInputError("no input files given; pass --input with .parquet or .jsonl shards")
    return sources


def check_text_column(source: Source, text_key: str) -> None:
    """Fail early, before anything is written, when the shard has no string column `text_key`."""
    if source.format == "parquet":
        try:
            schema = pq.read_schema(source.path)
        except (pa.ArrowException, OSError) as e:
            raise TokenizeInputError(f"input file {source.path}: not a readable Parquet file ({e})") from None
        if text_key not in schema.names:
            raise TokenizeInputError(
                f"input file {source.path} has no column {text_key!r} (columns: {', '.join(schema.names)}); "
                "pass --text-key with the column that holds the text"
            )
        kind = schema.field(text_key).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise TokenizeInputError(
                f"input file {source.path}: column {text_key!r} is {kind}, not a string column; "
                "pass --text-key with the column that holds the text"
            )
        return
    with open(source.path, "rb") as f:
        number, line = next(((n, line) for n, line in enumerate(f, 1) if line.strip()), (0, b""))
    if not line:
        return  # an empty shard contributes no documents
    try:
        record = json.loads(line)
    except ValueError as e:
        raise TokenizeInputError(f"input file {source.path}, line {number}: not JSON ({e})") from None
    if not isinstance(record, dict) or text_key not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise TokenizeInputError(
            f"input file {source.path}, line {number}: no key {text_key!r} (found: {keys}); "
            "pass --text-key with the key that holds the text"
        )


def iter_batches(source: Source, text_key: str, shard_docs: int) -> Iterator[Batch]:
    """Batches of up to `shard_docs` documents, in file order."""
    if source.format == "parquet":
        first = 0
        try:
            pf = pq.ParquetFile(source.path)
            rows = max(pf.metadata.num_rows, 1)
            for record_batch in pf.iter_batches(batch_size=shard_docs, columns=[text_key]):
                n = record_batch.num_rows
                # Share the file's bytes out so that its batches add up to its size exactly.
                nbytes = source.size * (first + n) // rows - source.size * first // rows
                yield Batch(str(source.path), "parquet", first, record_batch.column(0), nbytes)
                first += n
        except (pa.ArrowException, OSError) as e:
            raise TokenizeInputError(
                f"input file {source.path}, rows from {first}: cannot read Parquet ({e}); re-export the shard"
            ) from None
        return
    with open(source.path, "rb") as f:
        line = 1
        while True:
            lines = list(itertools.islice(f, shard_docs))
            if not lines:
                return
            data = b"".join(lines)
            yield Batch(str(source.path), "jsonl", line, data, len(data))
            line += len(lines)


def batch_texts(batch: Batch, text_key: str) -> list[str | None]:
    """The batch's texts (None for a record without text); runs in the worker process."""
    if batch.format == "parquet":
        return batch.payload.to_pylist()
    options = pajson.ParseOptions(
        explicit_schema=pa.schema([(text_key, pa.string())]), unexpected_field_behavior="ignore"
    )
    read = pajson.ReadOptions(use_threads=False, block_size=max(len(batch.payload), 1 << 16))
    try:
        table = pajson.read_json(pa.BufferReader(batch.payload), read_options=read, parse_options=options)
    except pa.ArrowInvalid as e:
        raise TokenizeInputError(
            f"input file {batch.path}, lines from {batch.first}: bad JSON Lines record ({e}); "
            f"every line must be a JSON object whose {text_key!r} is a string"
        ) from None
    return table.column(text_key).to_pylist()


def total_bytes(sources: Sequence[Source]) -> int:
    """Sum of the shards' sizes (the progress bar's total)."""
    return sum(s.size for s in sources)


def default_workers() -> int:
    """Cores this process may use, leaving one for the parent that reads and writes."""
    return max(1, len(os.sched_getaffinity(0)) - 1)
