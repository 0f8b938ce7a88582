"""Tokenization throughput: our pipeline against a Megatron-style baseline on the same JSONL input.

    .venv/bin/python bench/bench_tokenize.py [--mb 8] [--workers 1] [--repeat 2] [--rare 0.1]

Baseline = what Megatron-LM's tools/preprocess_data.py does: a `multiprocessing.Pool` (fork) maps
`json.loads` + `tokenizer.encode` over the file one line at a time (imap, chunksize 32), sends each
document's ids back as a Python list, and the parent writes every document on its own. Ours =
`workloads.trainer.tokenize.tokenize_files`: batches of documents, one `encode_batch_fast` per batch,
Arrow JSON parsing in the worker, one numpy array per batch. Same tokenizer (the bundled 8k BPE), same
input, one tokenizer thread per process in both, and the two outputs must be byte-identical.

Reported per pipeline: tokens/s (wall), tokens/s per worker (wall / workers, the usual "per core"),
and tokens per CPU-second of all its processes (parent included) — the strictest per-core figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process in both pipelines
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workloads.trainer.assets.build_tokenizer import TOKENIZER_JSON, sample_documents  # noqa: E402
from workloads.trainer.data.indexed import IndexedDatasetWriter  # noqa: E402
from workloads.trainer.tokenize import tokenize_files  # noqa: E402

_BASE: dict = {}


def _base_init(tokenizer_path: str, eod: int) -> None:
    from tokenizers import Tokenizer

    _BASE.update(tok=Tokenizer.from_file(tokenizer_path), eod=eod)


def _base_encode(line: str):
    # As Megatron's Encoder.encode: one JSON document in, its ids (a list) and its size out.
    text = json.loads(line)["text"]
    ids = _BASE["tok"].encode(text).ids
    if ids:
        ids.append(_BASE["eod"])
    return ids, len(line)


def run_baseline(jsonl: Path, prefix: Path, workers: int) -> int:
    """Megatron-style preprocess_data: returns the number of tokens written."""
    from tokenizers import Tokenizer

    eod = Tokenizer.from_file(str(TOKENIZER_JSON)).token_to_id("<|endoftext|>")
    tokens = 0
    with open(jsonl, encoding="utf-8") as fin, IndexedDatasetWriter(prefix, "uint16") as writer:
        with mp.get_context("fork").Pool(workers, _base_init, (str(TOKENIZER_JSON), eod)) as pool:
            for ids, _ in pool.imap(_base_encode, fin, 32):
                if ids:
                    writer.add_document(ids)  # one write per document, as Megatron's builder
                    tokens += len(ids)
    return tokens


def run_ours(jsonl: Path, prefix: Path, workers: int) -> int:
    return tokenize_files([jsonl], TOKENIZER_JSON, prefix, workers=workers).tokens


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn, jsonl: Path, prefix: Path, workers: int, repeat: int) -> dict:
    """Best of `repeat` runs (least disturbed by other load on the machine)."""
    best = None
    for _ in range(repeat):
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        tokens = fn(jsonl, prefix, workers)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        if best is None or wall < best["wall"]:
            best = {"tokens": tokens, "wall": wall, "cpu": cpu}
    best["tok_s"] = best["tokens"] / best["wall"]
    best["tok_s_worker"] = best["tok_s"] / workers
    best["tok_cpu_s"] = best["tokens"] / best["cpu"]
    return best


def write_input(path: Path, mb: float, rare: float) -> None:
    """The sample's documents repeated to `mb` MB; a `rare` fraction of words replaced by fresh made-up
    words, so that the input has the long tail of a real corpus (names, typos, rare words) and a piece
    cache cannot simply hit on everything."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < mb * 1e6:
            for doc in sample_documents():
                if rare > 0:
                    words = doc.split(" ")
                    for i in range(len(words)):
                        if rng.random() < rare:
                            words[i] = "".join(rng.choices(letters, k=rng.randint(3, 10)))
                    doc = " ".join(words)
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0, help="size of the generated JSONL input")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rare", type=float, default=0.0, help="fraction of words made up (long tail)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        jsonl = tmp / "input.jsonl"
        write_input(jsonl, args.mb, args.rare)
        size_mb = jsonl.stat().st_size / 1e6
        base = measure(run_baseline, jsonl, tmp / "base", args.workers, args.repeat)
        ours = measure(run_ours, jsonl, tmp / "ours", args.workers, args.repeat)
        for ext in (".bin", ".idx"):
            same = (tmp / f"base{ext}").read_bytes() == (tmp / f"ours{ext}").read_bytes()
            assert same, f"outputs differ ({ext}): the comparison would be meaningless"
    print(
        f"input: {size_mb:.1f} MB JSONL ({args.rare:.0%} made-up words), {ours['tokens']:,} tokens, "
        f"workers={args.workers}, best of {args.repeat}; outputs byte-identical"
    )
    print(f"{'pipeline':<26}{'tok/s':>12}{'tok/s/worker':>15}{'tok/CPU-s':>12}{'wall s':>9}{'CPU s':>8}")
    for name, r in (("megatron-style baseline", base), ("strata tokenize", ours)):
        print(
            f"{name:<26}{r['tok_s']:>12,.0f}{r['tok_s_worker']:>15,.0f}{r['tok_cpu_s']:>12,.0f}"
            f"{r['wall']:>9.2f}{r['cpu']:>8.2f}"
        )
    print(
        f"{'ratio (ours / baseline)':<26}{ours['tok_s'] / base['tok_s']:>12.2f}"
        f"{ours['tok_s_worker'] / base['tok_s_worker']:>15.2f}{ours['tok_cpu_s'] / base['tok_cpu_s']:>12.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
