"""The piece-cached encoder gives exactly HF's ids, or steps aside."""

import json

from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from workloads.trainer.assets.build_tokenizer import TOKENIZER_JSON, sample_documents
from workloads.trainer.data.pieces import PROBES, PieceEncoder

# Llama-3's pre-tokenizer regex: a Split(Isolated) + ByteLevel(use_regex=False) configuration.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def hf(tok, texts):
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def train(pre_tokenizer, normalizer=None):
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample_documents()[:20], trainer=trainer)
    return tok


def codepoint_probes():
    """Every code point up to U+2FFF (Latin to CJK punctuation) and a stride through the rest."""
    cps = [*range(0x3000), *range(0x3000, 0x110000, 211)]
    return [f"a{c}a 1{c}1 .{c}. {c}x {c} \n{c}\n" for c in map(chr, cps) if not 0xD800 <= ord(c) <= 0xDFFF]


def test_bundled_tokenizer_fast_path_equals_hf_on_text_and_every_probed_code_point():
    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    enc = PieceEncoder(tok)
    assert enc.fast
    texts = sample_documents()[:30] + PROBES
    assert enc.encode(texts) == hf(tok, texts)
    probes = codepoint_probes()
    assert enc.encode(probes) == hf(tok, probes)


def test_added_token_text_is_encoded_as_hf_does():
    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    texts = ["the end<|endoftext|>In the beginning", "no special here"]
    ids = PieceEncoder(tok).encode(texts)
    assert ids == hf(tok, texts) and 0 in ids[0]


def test_split_regex_configuration_equals_hf():
    split = pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3_PATTERN), behavior="isolated")
    tok = train(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    enc = PieceEncoder(tok)
    assert enc.fast
    texts = sample_documents()[20:40] + PROBES + ["12345678 digits, CAPS'LL and\r\n\r\nnewlines"]
    assert enc.encode(texts) == hf(tok, texts)


def test_unrecognised_configuration_falls_back_to_hf():
    tok = train(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizer=normalizers.NFKC())
    enc = PieceEncoder(tok)
    assert not enc.fast
    assert enc.encode(PROBES) == hf(tok, PROBES)


def test_a_pattern_the_engines_disagree_on_turns_the_fast_path_off():
    # Forge a config whose declared regex is not what the tokenizer actually runs: the probe check catches it.
    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    real_to_str = tok.to_str()
    config = json.loads(real_to_str)
    config["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\S+"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }

    class Forged:
        def __init__(self, inner):
            self.inner = inner

        def to_str(self):
            return json.dumps(config)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    enc = PieceEncoder(Forged(tok))
    assert not enc.fast
    assert enc.encode(PROBES) == hf(tok, PROBES)
