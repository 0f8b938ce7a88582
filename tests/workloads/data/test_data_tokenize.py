"""The tokenizer CLI: same tokens from Parquet and JSONL and any worker count, dtype choice, bad input."""

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, models, pre_tokenizers
from typer.testing import CliRunner

from workloads.trainer.assets.build_tokenizer import TOKENIZER_JSON, build_tokenizer, sample_documents
from workloads.trainer.data import IndexedDataset
from workloads.trainer.data.prepare import prepare_sample_dataset, write_sample_jsonl, write_sample_parquet
from workloads.trainer.tokenize import app, tokenize_files

TOK = str(TOKENIZER_JSON)


def files(prefix):
    return (prefix.parent / (prefix.name + ".idx")).read_bytes(), (prefix.parent / (prefix.name + ".bin")).read_bytes()


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args), "--no-progress"])


def test_tokens_equal_the_tokenizer_plus_eod_for_every_document(tmp_path):
    jsonl = write_sample_jsonl(tmp_path / "s.jsonl")
    stats = tokenize_files([jsonl], TOK, tmp_path / "out", shard_docs=16)
    tok, docs = Tokenizer.from_file(TOK), sample_documents()
    eod = tok.token_to_id("<|endoftext|>")
    ds = IndexedDataset(tmp_path / "out")
    assert ds.dtype == np.uint16 and len(ds) == len(docs) == stats.documents
    for i in (0, 1, len(docs) // 2, len(docs) - 1):
        np.testing.assert_array_equal(ds[i], tok.encode(docs[i], add_special_tokens=False).ids + [eod])


def test_parquet_and_jsonl_give_identical_files(tmp_path):
    tokenize_files([write_sample_jsonl(tmp_path / "s.jsonl")], TOK, tmp_path / "j", shard_docs=7)
    parquet = write_sample_parquet(tmp_path / "s.parquet", row_group_size=10)
    tokenize_files([parquet], TOK, tmp_path / "p", shard_docs=32)
    assert files(tmp_path / "j") == files(tmp_path / "p")


def test_one_and_two_workers_write_identical_files(tmp_path):
    shards = [write_sample_jsonl(tmp_path / "a.jsonl"), write_sample_parquet(tmp_path / "b.parquet")]
    tokenize_files(shards, TOK, tmp_path / "w1", workers=1, shard_docs=9)
    tokenize_files(shards, TOK, tmp_path / "w2", workers=2, shard_docs=9)
    assert files(tmp_path / "w1") == files(tmp_path / "w2")


def test_glob_inputs_are_sorted_and_no_eod_when_disabled(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"text": f"Book {name}"}) + "\n")
    stats = tokenize_files([str(tmp_path / "*.jsonl")], TOK, tmp_path / "out", append_eod=False)
    tok = Tokenizer.from_file(TOK)
    ds = IndexedDataset(tmp_path / "out")
    assert stats.documents == 2
    assert list(ds[0]) == tok.encode("Book a").ids and list(ds[1]) == tok.encode("Book b").ids


def test_records_without_text_are_skipped(tmp_path):
    lines = [{"text": "In the beginning"}, {"text": None}, {"text": ""}, {"other": 1}, {"text": "the end"}]
    (tmp_path / "s.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
    stats = tokenize_files([tmp_path / "s.jsonl"], TOK, tmp_path / "out")
    assert (stats.documents, stats.skipped) == (2, 3)


def big_vocab_tokenizer(path, size=70_000):
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_vocab_of_65500_or_more_is_written_as_int32(tmp_path):
    tok = big_vocab_tokenizer(tmp_path / "big.json")
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "w69999 w3 w65536"}) + "\n")
    tokenize_files([tmp_path / "s.jsonl"], tok, tmp_path / "out")
    ds = IndexedDataset(tmp_path / "out")
    assert ds.dtype == np.int32 and list(ds[0]) == [69999, 3, 65536, 0]


def no_output(tmp_path):
    return not any(p.name.startswith("out") for p in tmp_path.rglob("*"))


def test_bad_inputs_exit_2_with_a_message_naming_the_culprit_and_write_nothing(tmp_path):
    jsonl = write_sample_jsonl(tmp_path / "s.jsonl")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    (tmp_path / "s.csv").write_text("text\nhello\n")
    (tmp_path / "k.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    big = big_vocab_tokenizer(tmp_path / "big.json")
    no_eod = tmp_path / "noeod.json"
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(no_eod))
    out = ["--output-prefix", tmp_path / "out" / "x"]
    cases = [
        (["--input", tmp_path / "missing.jsonl", "--tokenizer", TOK], "missing.jsonl"),
        (["--input", tmp_path / "nomatch-*.jsonl", "--tokenizer", TOK], "matches no file"),
        (["--input", tmp_path / "s.csv", "--tokenizer", TOK], "unknown format"),
        (["--input", tmp_path / "t.parquet", "--tokenizer", TOK], "no column 'text'"),
        (["--input", tmp_path / "k.jsonl", "--tokenizer", TOK], "no key 'text'"),
        (["--input", tmp_path / "broken.jsonl", "--tokenizer", TOK], "broken.jsonl"),
        (["--input", jsonl, "--tokenizer", tmp_path / "nope.json"], "nope.json does not exist"),
        (["--input", jsonl, "--tokenizer", jsonl], "not a HF tokenizers JSON"),
        (["--input", jsonl, "--tokenizer", big, "--dtype", "uint16"], "use --dtype int32"),
        (["--input", jsonl, "--tokenizer", no_eod], "no token '<|endoftext|>'"),
        (["--input", jsonl, "--tokenizer", TOK, "--workers", "0"], "--workers"),
    ]
    for args, needle in cases:
        result = cli(*args, *out)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (args, result.output)
        assert no_output(tmp_path), args


def test_module_entry_point_runs_and_reports(tmp_path):
    jsonl = write_sample_jsonl(tmp_path / "s.jsonl")
    cmd = [sys.executable, "-m", "workloads.trainer.tokenize", "--input", str(jsonl), "--tokenizer", TOK]
    ok = subprocess.run([*cmd, "--output-prefix", tmp_path / "out", "--workers", "1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "110 documents" in ok.stdout and IndexedDataset(tmp_path / "out").num_documents == 110
    bad = subprocess.run([*cmd, "--output-prefix", tmp_path / "x", "--dtype", "int8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--dtype 'int8'" in bad.stderr


def test_prepare_sample_dataset_is_fast_and_idempotent(tmp_path):
    start = time.perf_counter()
    prefix = prepare_sample_dataset(tmp_path)
    assert time.perf_counter() - start < 5
    ds = IndexedDataset(prefix)
    assert ds.num_documents == len(sample_documents()) and ds.num_tokens > 100_000
    mtime = (tmp_path / "sample.bin").stat().st_mtime_ns
    assert prepare_sample_dataset(tmp_path) == prefix
    assert (tmp_path / "sample.bin").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.bin", "sample.idx", "sample.stamp.json"]


def test_bundled_tokenizer_is_what_build_tokenizer_produces():
    fresh = build_tokenizer()
    assert fresh.get_vocab_size() == 8192 and fresh.token_to_id("<|endoftext|>") == 0
    committed = json.loads(TOKENIZER_JSON.read_text(encoding="utf-8"))
    assert json.loads(fresh.to_str()) == committed, "tokenizer.json is stale: run build_tokenizer.py"


def test_inputs_without_documents_exit_2_naming_the_input_and_write_nothing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": None}) + "\n")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    cases = [("empty.jsonl", "no records at all"), ("blank.jsonl", "2 record(s), none with non-empty 'text'"),
             ("empty.parquet", "no records at all")]
    for name, needle in cases:
        for workers in ("1", "2"):
            result = cli("--input", tmp_path / name, "--tokenizer", TOK, "--output-prefix", tmp_path / "out" / "x",
                         "--workers", workers)
            assert result.exit_code == 2, (name, result.output)
            assert f"input {tmp_path / name}: no documents to tokenize ({needle})" in result.output, result.output
            assert no_output(tmp_path), name


def test_a_refused_run_leaves_an_earlier_dataset_at_the_prefix_as_it_was(tmp_path):
    jsonl = write_sample_jsonl(tmp_path / "s.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    prefix = tmp_path / "web"
    assert cli("--input", jsonl, "--tokenizer", TOK, "--output-prefix", prefix, "--workers", "1").exit_code == 0
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    result = cli("--input", tmp_path / "empty.jsonl", "--tokenizer", TOK, "--output-prefix", prefix)
    assert result.exit_code == 2 and "no documents" in result.output
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_an_output_prefix_that_names_a_directory_or_an_unwritable_place_exits_2(tmp_path):
    jsonl = write_sample_jsonl(tmp_path / "s.jsonl")
    (tmp_path / "afile").write_text("x")
    for prefix, needle in [(f"{tmp_path}/out/", "names no file"), (tmp_path / "afile" / "x", "is a file")]:
        result = cli("--input", jsonl, "--tokenizer", TOK, "--output-prefix", prefix)
        assert result.exit_code == 2 and needle in result.output, result.output
        assert no_output(tmp_path)
