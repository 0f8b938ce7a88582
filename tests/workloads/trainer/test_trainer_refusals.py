"""Bad input is refused with one line naming the key and a fix, exit 2, before the run writes anything."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from trainer_helpers import REPO, trainer_env
from workloads.trainer.cli import app
from workloads.trainer.config import ConfigError, load_config
from workloads.trainer.data import IndexedDatasetWriter
from workloads.trainer.model.args import ModelArgs, ModelShapeError
from workloads.trainer.train import main


@pytest.mark.parametrize("override,needle", [
    ("--model.n_heads=3", "model.n_heads=3 does not divide model.dim=128; set model.n_heads to one of 2, 4, 8"),
    ("--model.n_kv_heads=3", "model.n_kv_heads=3 does not divide model.n_heads=4"),
    ("--model.n_heads=128", "model.n_heads=128 gives an odd head size"),
    ("--model.dim=130", "set model.dim to a multiple of 4, e.g. 128"),
    ("--model.n_heads=0", "model.n_heads=0 must be > 0"),
    ("--model.vocab_size=-1", "model.vocab_size=-1 must be > 0"),
])
def test_a_model_shape_that_cannot_be_built_names_the_keys_and_values_that_fit(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_model_args_raise_a_typed_error_not_an_assertion():
    with pytest.raises(ModelShapeError, match="n_heads=3 does not divide dim=4096"):
        ModelArgs(n_heads=3)


def _empty_dataset(prefix):
    with IndexedDatasetWriter(prefix, "uint16"):
        pass
    return str(prefix)


@pytest.mark.parametrize("case", ["shape", "cuda", "nccl", "missing data", "empty data", "weights", "run dir is a file"])
def test_each_refusal_exits_2_with_one_line_and_leaves_no_run_dir(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    run_dir = tmp_path / "run"
    args = {
        "shape": ["--model.n_heads=3"],
        "cuda": ["--training.device=cuda"],
        "nccl": ["--training.device=cpu", "--parallel.backend=nccl"],
        "missing data": [f'--data.paths=["{tmp_path}/nope"]'],
        "empty data": [f'--data.paths=["{_empty_dataset(tmp_path / "data" / "empty")}"]'],
        "weights": [f'--data.paths=["{tmp_path}/nope"]', "--data.weights=[1.0, 2.0]"],
        "run dir is a file": [],
    }[case]
    needle = {"shape": "model.n_heads=3", "cuda": "training.device='cuda' but", "nccl": "--parallel.backend=gloo",
              "missing data": "data.paths[0]=", "empty data": "holds no tokens", "weights": "data.weights has 2",
              "run dir is a file": "job.run_dir="}[case]
    if case == "run dir is a file":
        run_dir = tmp_path / "file"
        run_dir.write_text("not a dir")
    before = sorted(tmp_path.rglob("*"))
    assert main(["--config", "tiny", f"--job.run_dir={run_dir}", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before  # no run dir, no config.json, no data cache


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --training.device=cuda is valid")
def test_cuda_on_a_machine_without_a_gpu_is_one_line_not_an_attribute_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "workloads.trainer.train", "--config", "tiny",
                        "--training.device=cuda", f"--job.run_dir={tmp_path}/run"],
                       cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: training.device='cuda' but") and r.stderr.count("\n") == 1, r.stderr
    assert "--training.device=cpu" in r.stderr and "GPU node" in r.stderr
    assert not (tmp_path / "run").exists()


def test_trainer_cli_train_refuses_the_same_way(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args, needle in ([["--model.n_heads=3"], "model.n_heads=3"], [["--training.device=cuda"], "training.device"]):
        r = CliRunner().invoke(app, ["train", "--config", "tiny", f"--job.run_dir={tmp_path}/run", *args])
        assert r.exit_code == 2 and needle in r.output, r.output
    assert not (tmp_path / "run").exists()


def test_plot_of_a_file_that_is_not_metrics_exits_2(tmp_path):
    for text in ("", "not json\n", json.dumps({"x": 1}) + "\n"):
        (tmp_path / "metrics.jsonl").write_text(text)
        r = CliRunner().invoke(app, ["plot", str(tmp_path)])
        assert r.exit_code == 2 and "not a trainer metrics file" in r.output, (text, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit)


def test_export_hf_with_a_missing_tokenizer_writes_nothing(tmp_path):
    r = CliRunner().invoke(app, ["export-hf", str(tmp_path), str(tmp_path / "hf"), "--tokenizer",
                                 str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "nope.json does not exist" in r.output, r.output
    assert not (tmp_path / "hf").exists()
