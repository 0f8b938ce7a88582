"""Tokenize Parquet / JSONL shards into a Megatron `.bin/.idx` dataset.

    python -m workloads.trainer.tokenize --input 'data/shard-*.parquet' \\
        --tokenizer workloads/trainer/assets/tokenizer.json --output-prefix out/web --workers 8

Where the speed comes from (see bench/bench_tokenize.py and docs/data.md): workers take whole batches
of documents (Arrow parses the JSON, one numpy array comes back per batch, one write per batch), and
byte-level BPE tokenizers are run piece by piece through a cache (`data/pieces.py`): each distinct
pre-token is encoded by HF once, with output identical to HF's. Each worker runs on one thread:
`--workers N` uses N cores plus a light parent. Output order is input order whatever N is.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from workloads.trainer.data.errors import DataError, TokenizeInputError
from workloads.trainer.data.indexed import IndexedDatasetWriter, optimal_dtype
from workloads.trainer.data.pieces import PieceEncoder
from workloads.trainer.data.sources import (
    Batch,
    batch_texts,
    check_text_column,
    default_workers,
    iter_batches,
    resolve_inputs,
    total_bytes,
)

EOD_TOKEN = "<|endoftext|>"
DTYPES = {"auto": None, "uint16": np.dtype(np.uint16), "int32": np.dtype(np.int32)}


@dataclass(frozen=True)
class TokenizeStats:
    """What one run wrote: documents, tokens, skipped records (no text, or empty), dtype and time."""

    prefix: str
    documents: int
    tokens: int
    skipped: int
    dtype: str
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def load_tokenizer(path: str | os.PathLike):
    """A HF `tokenizers.Tokenizer` from a local tokenizer.json, or TokenizeInputError naming the file."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise TokenizeInputError(
            f"tokenizer file {path} does not exist; pass a local tokenizer.json "
            "(the bundled one is workloads/trainer/assets/tokenizer.json)"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise TokenizeInputError(f"tokenizer file {path} is not a HF tokenizers JSON file ({e})") from None


def choose_dtype(vocab_size: int, requested: str, tokenizer_path: str | os.PathLike) -> np.dtype:
    """uint16 below 65,500 entries, else int32 (Megatron's rule); refuse a dtype too small for the vocab."""
    if requested not in DTYPES:
        raise TokenizeInputError(f"--dtype {requested!r} is not one of {', '.join(DTYPES)}")
    dtype = DTYPES[requested] or optimal_dtype(vocab_size)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise TokenizeInputError(
            f"tokenizer {tokenizer_path} has {vocab_size} tokens, more than {dtype} holds "
            f"(max id {np.iinfo(dtype).max}); use --dtype int32 or --dtype auto"
        )
    return dtype


def check_output_prefix(prefix: str | os.PathLike) -> None:
    """The prefix names files (PREFIX.bin/.idx) in a directory this user can create or write to."""
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)):
        raise TokenizeInputError(f"--output-prefix {text!r} names no file; give a path prefix such as data/web "
                                 "(writes data/web.bin and data/web.idx)")
    parent = next(p for p in Path(text).absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        what = "is a file" if not parent.is_dir() else "is not writable by this user"
        raise TokenizeInputError(f"--output-prefix {text}: {parent} {what}; choose an output path you can write")


def _no_documents(sources: Sequence, text_key: str, skipped: int) -> TokenizeInputError:
    """The refusal for inputs that hold no document: an empty dataset only fails later, in training."""
    names = ", ".join(str(s.path) for s in sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    why = f"{skipped:,} record(s), none with non-empty {text_key!r}" if skipped else "no records at all"
    return TokenizeInputError(f"input {names}: no documents to tokenize ({why}); nothing written. Pass shards whose "
                              f"{text_key!r} holds text, or --text-key naming the column that does")


# --- worker side -----------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(tokenizer_path: str, text_key: str, eod_id: int | None, dtype: str) -> None:
    # One tokenizer thread per worker: --workers N means N cores, and the per-core figures stay honest.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    encoder = PieceEncoder(load_tokenizer(tokenizer_path))
    _WORKER.update(encoder=encoder, key=text_key, eod=eod_id, dtype=np.dtype(dtype))


def _encode_batch(batch: Batch) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(tokens, lengths, skipped records, input bytes) of one batch, in the batch's order."""
    texts = batch_texts(batch, _WORKER["key"])
    # As Megatron: a record without text, or whose text encodes to nothing, is skipped (no lone EOD).
    ids = [i for i in _WORKER["encoder"].encode([t for t in texts if t]) if i]
    eod = _WORKER["eod"]
    if eod is not None:
        for doc in ids:
            doc.append(eod)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), _WORKER["dtype"], int(lengths.sum()))
    return tokens, lengths, len(texts) - len(ids), batch.nbytes


# --- parent side -----------------------------------------------------------------------------------
def _encode_all(batches: Iterable[Batch], workers: int, initargs: tuple) -> Iterator[tuple]:
    """Encoded batches in input order; with workers > 1 at most 2·workers batches are in flight."""
    if workers == 1:
        _init_worker(*initargs)
        yield from map(_encode_batch, batches)
        return
    # spawn, not fork: the parent may hold torch or tokenizer threads, which do not survive a fork.
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_batch, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _Progress:
    """A rich progress bar over input bytes, with documents and tokens/s; silent when disabled."""

    def __init__(self, enabled: bool, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]tokenize"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[docs]:>12,} docs  {task.fields[rate]:>8} tok/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.bar.add_task("tokenize", total=total, docs=0, rate="-")
        self.start = time.perf_counter()

    def update(self, nbytes: int, docs: int, tokens: int) -> None:
        rate = tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=nbytes, docs=docs, rate=f"{rate / 1e3:,.0f}k")

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def tokenize_files(
    inputs: Sequence[str | os.PathLike],
    tokenizer: str | os.PathLike,
    output_prefix: str | os.PathLike,
    text_key: str = "text",
    workers: int = 1,
    append_eod: bool = True,
    eod_token: str = EOD_TOKEN,
    shard_docs: int = 1000,
    dtype: str = "auto",
    progress: bool = False,
) -> TokenizeStats:
    """Tokenize `inputs` (paths or glob patterns of .parquet/.jsonl shards) into `output_prefix`.bin/.idx.

    Every input, the text column, the tokenizer, its EOD token, the dtype and the output path are checked
    before anything is written; a failure later (a corrupt record, or inputs that hold no document at all)
    removes the partial output. Raises TokenizeInputError (or another DataError) with the file and a fix.

    Args:
        inputs: input shards; patterns are expanded and sorted; output follows this order.
        tokenizer: local HF tokenizer.json.
        output_prefix: output path without .bin/.idx; directories are created.
        text_key: column (Parquet) or key (JSONL) holding the document text.
        workers: encoding processes; 1 encodes in this process. The output does not depend on it.
        append_eod: append `eod_token` to every document.
        shard_docs: documents per batch handed to a worker.
        dtype: "auto" (uint16 if the vocab is under 65,500, else int32), "uint16" or "int32".
        progress: show a progress bar on stderr.
    """
    if workers < 1 or shard_docs < 1:
        raise TokenizeInputError(f"--workers ({workers}) and --shard-docs ({shard_docs}) must be >= 1")
    check_output_prefix(output_prefix)
    sources = resolve_inputs([os.fspath(p) for p in inputs])
    for source in sources:
        check_text_column(source, text_key)
    tok = load_tokenizer(tokenizer)
    out_dtype = choose_dtype(tok.get_vocab_size(with_added_tokens=True), dtype, tokenizer)
    eod_id = tok.token_to_id(eod_token) if append_eod else None
    if append_eod and eod_id is None:
        raise TokenizeInputError(
            f"tokenizer {tokenizer} has no token {eod_token!r}; pass --eod-token with its end-of-document "
            "token, or --no-append-eod"
        )
    batches = (b for s in sources for b in iter_batches(s, text_key, shard_docs))
    initargs = (os.fspath(tokenizer), text_key, eod_id, out_dtype.str)
    start, docs, tokens, skipped = time.perf_counter(), 0, 0, 0
    with IndexedDatasetWriter(output_prefix, out_dtype) as writer, _Progress(progress, total_bytes(sources)) as bar:
        for ids, lengths, skip, nbytes in _encode_all(batches, workers, initargs):
            writer.add_documents(ids, lengths)
            docs, tokens, skipped = docs + len(lengths), tokens + len(ids), skipped + skip
            bar.update(nbytes, docs, tokens)
        if docs == 0:  # raised inside the writer's block: it removes what it wrote
            raise _no_documents(sources, text_key, skipped)
    return TokenizeStats(os.fspath(output_prefix), docs, tokens, skipped, str(out_dtype), time.perf_counter() - start)


# --- CLI -------------------------------------------------------------------------------------------
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


@app.command("tokenize")
def tokenize_command(
    more_inputs: Annotated[
        list[str] | None, typer.Argument(metavar="SHARDS", help="More input shards (e.g. a shell glob).")
    ] = None,
    input: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Input .parquet/.jsonl shard or quoted glob; repeatable."),
    ] = None,
    tokenizer: Annotated[Path, typer.Option(help="Local HF tokenizer.json.")] = ...,
    output_prefix: Annotated[str, typer.Option(help="Output path without .bin/.idx.")] = ...,
    text_key: Annotated[str, typer.Option(help="Column / JSON key holding the text.")] = "text",
    workers: Annotated[int, typer.Option(help="Encoding processes (default: cores - 1).")] = default_workers(),
    append_eod: Annotated[
        bool, typer.Option("--append-eod/--no-append-eod", help="End every document with the EOD token.")
    ] = True,
    eod_token: Annotated[str, typer.Option(help="End-of-document token.")] = EOD_TOKEN,
    shard_docs: Annotated[int, typer.Option(help="Documents per batch handed to a worker.")] = 1000,
    dtype: Annotated[str, typer.Option(help="auto | uint16 | int32 (auto: uint16 below 65,500 tokens).")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
) -> None:
    """Tokenize Parquet/JSONL shards into a Megatron .bin/.idx dataset (bad input: exit 2, nothing written)."""
    try:
        stats = tokenize_files(
            [*(input or []), *(more_inputs or [])],
            tokenizer,
            output_prefix,
            text_key,
            workers,
            append_eod,
            eod_token,
            shard_docs,
            dtype,
            progress and sys.stderr.isatty(),
        )
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except OSError as e:  # the file system failed us mid-run (disk full, a shard unreadable): not bad input
        typer.echo(f"error: {e.filename or output_prefix}: {e.strerror or e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"wrote {stats.prefix}.bin/.idx: {stats.documents:,} documents, {stats.tokens:,} tokens ({stats.dtype}), "
        f"{stats.skipped:,} skipped, {stats.seconds:.1f} s, {stats.tokens_per_second / 1e3:,.0f}k tokens/s"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m workloads.trainer.tokenize`; exits 0, 2 on bad input."""
    app(args=argv, prog_name="python -m workloads.trainer.tokenize")


if __name__ == "__main__":
    main()
