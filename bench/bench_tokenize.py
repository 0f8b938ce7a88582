"""Tokenization throughput: our pipeline against a Megatron-style baseline on the same JSONL input.

    .venv/bin/python bench/bench_tokenize.py [--mb 8] [--workers 1] [--rounds 5] [--rare 0 0.02 0.1]

Baseline = what Megatron-LM's tools/preprocess_data.py does: a `multiprocessing.Pool` (fork) maps
`json.loads` + `tokenizer.encode` over the file one line at a time (imap, chunksize 32), sends each
document's ids back as a Python list, and the parent writes every document on its own. Ours =
`workloads.trainer.tokenize.tokenize_files`: batches of documents, one `encode_batch_fast` per batch,
Arrow JSON parsing in the worker, one numpy array per batch. Same tokenizer (the bundled 8k BPE), same
input, one tokenizer thread per process in both, and the two outputs must be byte-identical.

One input per `--rare` value (the sample text with that fraction of words made up). Each round runs both
pipelines once on every input, back to back, in alternating order (A,B then B,A), so that other load on
the machine falls on both alike; each round gives one ratio ours / baseline per input.

Reported per input: tokens per CPU-second of all the pipeline's processes (parent included; the strictest
per-core figure) and tokens/s per worker (wall / workers, the usual "per core"), medians over the rounds,
and the ratios as median [min-max] of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import statistics
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


def run_once(fn, jsonl: Path, prefix: Path, workers: int) -> dict:
    """One run of a pipeline: tokens, wall seconds and CPU seconds of all its processes (parent included)."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    tokens = fn(jsonl, prefix, workers)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return {"tokens": tokens, "tok_s_worker": tokens / wall / workers, "tok_cpu_s": tokens / cpu}


def spread(xs: list[float], fmt: str = ".2f") -> str:
    """median [min-max] of the samples: the figure and how far the rounds moved."""
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


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
    parser.add_argument("--mb", type=float, default=8.0, help="size of each generated JSONL input")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", "--repeat", type=int, default=5,
                        help="rounds; each runs both pipelines once on every input")
    parser.add_argument("--rare", type=float, nargs="+", default=[0.0, 0.02, 0.1],
                        help="fractions of words made up (long tail): one input, one row, per value")
    args = parser.parse_args(argv)
    pipelines = {"base": run_baseline, "ours": run_ours}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        inputs = {}
        for rare in args.rare:
            inputs[rare] = tmp / f"input-{rare}.jsonl"
            write_input(inputs[rare], args.mb, rare)
        runs: dict[tuple[float, str], list[dict]] = {(rare, name): [] for rare in args.rare for name in pipelines}
        # Interleaved: every round runs both pipelines on every input, back to back, the order swapped
        # each time (A,B then B,A), so that the load of a shared machine falls on both alike.
        for rnd in range(args.rounds):
            for i, (rare, jsonl) in enumerate(inputs.items()):
                order = list(pipelines) if (rnd + i) % 2 == 0 else list(pipelines)[::-1]
                for name in order:
                    runs[(rare, name)].append(run_once(pipelines[name], jsonl, tmp / name, args.workers))
                for ext in (".bin", ".idx"):
                    same = (tmp / f"base{ext}").read_bytes() == (tmp / f"ours{ext}").read_bytes()
                    assert same, f"outputs differ ({ext}, {rare:.0%} made-up words): the comparison would be meaningless"
                print(f"round {rnd + 1}/{args.rounds}  {rare:>4.0%} made-up words  ratio per CPU-s "
                      f"{runs[(rare, 'ours')][-1]['tok_cpu_s'] / runs[(rare, 'base')][-1]['tok_cpu_s']:.2f}",
                      file=sys.stderr, flush=True)
        sizes = {rare: p.stat().st_size / 1e6 for rare, p in inputs.items()}
    load.append(os.getloadavg()[0])

    print(f"{len(inputs)} inputs of {args.mb:g} MB JSONL, workers={args.workers}, {args.rounds} rounds "
          "(both pipelines on every input each round, order alternated); outputs byte-identical in every round")
    print("per-pipeline figures: median over the rounds; ratios: median [min-max] of the per-round ratios")
    print(f"{'made-up words':<14}{'tokens':>11}{'base tok/CPU-s':>16}{'ours tok/CPU-s':>16}"
          f"{'ratio per CPU-s':>20}{'base tok/s/worker':>19}{'ours tok/s/worker':>19}{'ratio wall':>20}")
    for rare in inputs:
        base, ours = runs[(rare, "base")], runs[(rare, "ours")]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        ratio = lambda k: [o[k] / b[k] for o, b in zip(ours, base, strict=True)]  # noqa: E731
        print(f"{rare:<14.0%}{ours[0]['tokens']:>11,}{med(base, 'tok_cpu_s'):>16,.0f}{med(ours, 'tok_cpu_s'):>16,.0f}"
              f"{spread(ratio('tok_cpu_s')):>20}{med(base, 'tok_s_worker'):>19,.0f}{med(ours, 'tok_s_worker'):>19,.0f}"
              f"{spread(ratio('tok_s_worker')):>20}")
    print(f"input sizes: {', '.join(f'{s:.1f} MB' for s in sizes.values())}; "
          f"load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
