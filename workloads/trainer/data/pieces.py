"""Exact, faster encoding for byte-level BPE tokenizers: split into pre-token pieces, encode each once.

A byte-level BPE tokenizer first cuts the text with a regex into pieces ("pre-tokens": a word with its
leading space, a run of digits, punctuation, whitespace) and then encodes every piece on its own. Text
repeats its pieces constantly, so `PieceEncoder` does the cut itself (the `regex` module, which
supports the same `\\p{..}` classes), looks each piece up in a dictionary, and asks the HF tokenizer
only for pieces it has not seen. HF tokenizers keeps a similar word cache, but pays per token for
offsets, alignments and Encoding objects; skipping that work is what makes this about twice as fast
per core (bench/bench_tokenize.py).

The output equals `tokenizer.encode_batch_fast(texts, add_special_tokens=False)` exactly. That holds
only for the configurations recognised below (no normalizer; ByteLevel with its GPT-2 regex, or a
Split regex followed by ByteLevel), documents that contain no added-token text (those take the HF
path), and it is checked on probe strings when the encoder is built: any mismatch turns the fast path
off. Every other tokenizer is encoded by HF directly: same result, HF speed.
"""

from __future__ import annotations

import itertools
import json

try:
    import regex
except ImportError:  # the fast path is an accelerator: without `regex`, HF encodes everything
    regex = None

# tokenizers' ByteLevel pre-tokenizer regex (use_regex=true), as in GPT-2.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Strings that exercise the regex corners: contractions, whitespace runs and kinds, digits, scripts,
# combining marks, emoji, control and separator characters.
PROBES = [
    "Hello, world! It's 2024: we've 3.14159 reasons -- don't we?\n\n  Indented\tTabbed\r\nEnd  ",
    "naïve café, Ünïcödé; 漢字かな交じり文。 한국어 텍스트! Ελληνικά, русский текст, עברית, العربية",
    "emoji 🙂👍🏽 👨‍👩‍👧 flags 🇨🇭 math ∑x² ≤ ∞ — “quotes” ‘single’ «guillemets» …",
    "e\u0301 a\u0308 combining; nbsp\u00a0here, thin\u2009space, line\u2028sep, para\u2029sep, zwsp\u200b.",
    "ctrl \x1c\x1d\x1e\x1f \x0b\x0c \x85 unit sep; digits ١٢٣ ⅷ ½ ² 𝟙; 'S 'LL 'Re",
    "   leading and trailing   \n\n\n",
    "",
]


def _split_pattern(config: dict) -> tuple[str, bool] | None:
    """(pattern, pieces between matches are kept) if the pre-tokenizer is one we reproduce, else None."""
    if config.get("normalizer") is not None:
        return None
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN, False  # the GPT-2 pattern matches every character: nothing between matches
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2:
        split, byte_level = steps
        if (
            split.get("type") == "Split"
            and "Regex" in (split.get("pattern") or {})
            and split.get("behavior") == "Isolated"
            and not split.get("invert")
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space")
        ):
            return split["pattern"]["Regex"], True
    return None


class PieceEncoder:
    """Encodes batches of texts exactly as `tokenizer.encode_batch_fast(..., add_special_tokens=False)`."""

    def __init__(self, tokenizer, max_pieces: int = 1 << 20):
        self.tok = tokenizer
        self.max_pieces = max_pieces
        self.cache: dict[str, list[int]] = {}
        self.split = self.gaps = self.special = None
        found = _split_pattern(json.loads(tokenizer.to_str())) if regex is not None else None
        if found is None:
            return
        self.split, self.gaps = regex.compile(found[0]), found[1]
        added = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values()), key=len, reverse=True)
        self.special = regex.compile("|".join(map(regex.escape, added))) if added else None
        if self._encode_hf(PROBES) != self.encode(PROBES):
            self.split = None  # the regex engines disagree on this pattern: HF does all the work

    @property
    def fast(self) -> bool:
        """Whether the piece cache is in use (False: every text goes through HF as a whole)."""
        return self.split is not None

    def _encode_hf(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def _pieces(self, text: str) -> list[str]:
        if not self.gaps:
            return self.split.findall(text)
        # Split(behavior=Isolated) keeps the text between matches as pieces of its own.
        pieces, end = [], 0
        for m in self.split.finditer(text):
            if m.start() > end:
                pieces.append(text[end : m.start()])
            if m.end() > m.start():
                pieces.append(m.group())
            end = m.end()
        if end < len(text):
            pieces.append(text[end:])
        return pieces

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of every text, in order."""
        if not self.fast:
            return self._encode_hf(texts)
        split = [self.special is None or self.special.search(t) is None for t in texts]
        pieces = [self._pieces(t) if ok else None for t, ok in zip(texts, split, strict=True)]
        if len(self.cache) > self.max_pieces:
            self.cache.clear()  # bounded memory; the output does not depend on what is cached
        missing = list({p for ps in pieces if ps for p in ps if p not in self.cache})
        self.cache.update(zip(missing, self._encode_hf(missing), strict=True))
        # Documents holding added-token text go through HF whole, so that the token is matched as HF does.
        slow = [t for t, ok in zip(texts, split, strict=True) if not ok]
        slow_ids = iter(self._encode_hf(slow) if slow else [])
        get, chain = self.cache.__getitem__, itertools.chain.from_iterable
        return [list(chain(map(get, ps))) if ps is not None else next(slow_ids) for ps in pieces]
