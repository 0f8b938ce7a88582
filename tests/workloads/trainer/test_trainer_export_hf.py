"""Hugging Face export: transformers' ApertusForCausalLM loads it and computes the same logits."""

import json

import torch
import transformers

from workloads.trainer.components.checkpoint import CheckpointManager
from workloads.trainer.components.train_state import get_train_state
from workloads.trainer.config import CheckpointConfig
from workloads.trainer.export_hf import export_checkpoint, hf_name
from workloads.trainer.model import PRESETS, Transformer


def perturbed_tiny() -> Transformer:
    """The tiny preset with every parameter moved off its initial value (norms and xIELU included)."""
    torch.manual_seed(0)
    model = Transformer(PRESETS["tiny"].replace(max_seq_len=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.ndim == 1 else 0.01))
    return model


def test_exported_tiny_gives_the_same_logits_in_transformers(tmp_path):
    model = perturbed_tiny().eval()
    opt = torch.optim.AdamW(model.parameters())
    shape = {k: v for k, v in model.args.shape_dict().items() if k != "max_seq_len"}
    manager = CheckpointManager(CheckpointConfig(asynchronous=False), run_dir=tmp_path)  # <run_dir>/checkpoints
    manager.save(3, get_train_state(model, opt, step=3, consumed_samples=12, model_shape=shape,
                                    config={"training": {"seq_len": 64}}))

    out = export_checkpoint(tmp_path, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "apertus" and config["intermediate_size"] == 672
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "ApertusForCausalLM"

    tokens = torch.randint(0, model.args.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_every_parameter_has_a_hugging_face_name():
    model = Transformer(PRESETS["tiny"].replace(n_layers=2))
    names = {hf_name(n) for n, _ in model.named_parameters()}
    assert len(names) == len(list(model.parameters()))
    assert "model.layers.1.mlp.act_fn.alpha_n" in names and "lm_head.weight" in names
