"""Train the bundled byte-level BPE tokenizer (`tokenizer.json`, vocab 8192) on `sample.txt`.

    python -m workloads.trainer.assets.build_tokenizer            # rewrites tokenizer.json beside this file
    python -m workloads.trainer.assets.build_tokenizer --check    # exit 1 if tokenizer.json is stale

sample.txt — provenance and licence
-----------------------------------
sample.txt holds the books of Genesis, Ruth, Jonah, Luke and Acts of the World English Bible (WEB),
one chapter per document (a "Book N" title line, then the chapter's verses as one paragraph), documents
separated by a blank line. The WEB is dedicated to the public domain by its translators; Debian's
package `sword-text-web` (module engWEB2015eb) states: "The World English Bible is in the Public Domain.
That means that it is not copyrighted." It was extracted from that package with
`diatheke -b engWEB2015eb -f plain -k <Book>`, verse numbers removed and whitespace collapsed; the text is
otherwise unchanged (word joins such as "Godcreated" come from the module's markup). "World English
Bible" is a trademark of eBible.org; the text here is an excerpt and is not presented as the WEB itself.

The tokenizer is a GPT-2-style byte-level BPE (every byte is in the alphabet, so any UTF-8 text encodes
without an unknown token) with one special token, `<|endoftext|>` (id 0), the end-of-document token
that the tokenizer CLI appends to every document.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ASSETS = Path(__file__).resolve().parent
SAMPLE_TEXT = ASSETS / "sample.txt"
TOKENIZER_JSON = ASSETS / "tokenizer.json"
EOD_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 8192


def sample_documents(path: Path = SAMPLE_TEXT) -> list[str]:
    """The documents of sample.txt (separated by blank lines), in file order."""
    return [doc.strip() for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on the sample documents; deterministic for a given sample.txt."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_documents(), trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    """Write tokenizer.json, or with --check report whether the committed one matches a fresh build."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed tokenizer.json")
    parser.add_argument("--output", type=Path, default=TOKENIZER_JSON)
    args = parser.parse_args(argv)
    text = build_tokenizer().to_str(pretty=False)
    if args.check:
        same = args.output.is_file() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'STALE: run build_tokenizer.py'}")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text) // 1024} KiB, vocab {VOCAB_SIZE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
