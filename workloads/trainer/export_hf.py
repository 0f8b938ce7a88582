"""Export a checkpoint as a Hugging Face `ApertusForCausalLM` (config.json + safetensors).

`python -m workloads.trainer.cli export-hf runs/tiny/checkpoints/latest out/tiny-hf`; then
`transformers.AutoModelForCausalLM.from_pretrained("out/tiny-hf")` gives the same logits as our model.
Only the weight names differ (see `hf_name`); RoPE uses the same rotate-half layout, xIELU the same
parametrisation (softplus⁻¹ of α_p and of α_n − β), and there is no rope scaling.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .components.checkpoint import CheckpointManager, latest_path
from .components.train_state import CheckpointError
from .model.args import ModelArgs

_LAYER_NAMES = {
    "attention_norm.weight": "attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",
    "attention.k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "feedforward_layernorm.weight",
    "feed_forward.w_up.weight": "mlp.up_proj.weight",
    "feed_forward.w_down.weight": "mlp.down_proj.weight",
    "feed_forward.act.alpha_p": "mlp.act_fn.alpha_p",
    "feed_forward.act.alpha_n": "mlp.act_fn.alpha_n",
}
_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    """Our parameter name → the Hugging Face Apertus one."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"


def build_hf_config(args: ModelArgs, *, dtype: torch.dtype, bos_token_id: int | None = None,
                    eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
    """config.json for `ApertusForCausalLM` describing `args`."""
    return {
        "architectures": ["ApertusForCausalLM"], "model_type": "apertus",
        "vocab_size": args.vocab_size, "hidden_size": args.dim, "intermediate_size": args.ffn_dim,
        "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim, "hidden_act": "xielu",
        "max_position_embeddings": args.max_seq_len, "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta, "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def convert_state_dict(model_sd: dict[str, torch.Tensor], args: ModelArgs, dtype: torch.dtype
                       ) -> dict[str, torch.Tensor]:
    """Rename to Hugging Face names and cast; adds each xIELU's β and ε buffers (HF keeps them in the
    state dict) so that loading reports no missing keys."""
    out = {hf_name(k): v.detach().to("cpu", dtype).contiguous() for k, v in model_sd.items()}
    for i in range(args.n_layers):
        out[f"model.layers.{i}.mlp.act_fn.beta"] = torch.tensor(0.5, dtype=dtype)
        out[f"model.layers.{i}.mlp.act_fn.eps"] = torch.tensor(-1e-6, dtype=dtype)
    return out


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def write_hf_checkpoint(model_sd: dict[str, torch.Tensor], args: ModelArgs, out_dir: str | Path, *,
                        dtype: torch.dtype = torch.float32, max_shard_bytes: int = 5 * 2**30,
                        tokenizer: str | Path | None = None, eos_token_id: int | None = None) -> Path:
    """Write config.json and model*.safetensors (sharded with an index past `max_shard_bytes`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = convert_state_dict(model_sd, args, dtype)
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = build_hf_config(args, dtype=dtype, eos_token_id=eos_token_id)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        shutil.copy(tokenizer, out / "tokenizer.json")
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A step directory, or a checkpoint directory / run directory whose `latest` is followed."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "latest").is_file():
            latest = latest_path(candidate)  # read-only: no manager, no clean-up of .tmp-* directories
            assert latest is not None
            return latest
    if (path / "state.json").is_file():
        return path
    raise CheckpointError(f"{path} is neither a checkpoint step directory nor holds a 'latest' pointer")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32,
                      tokenizer: str | Path | None = None) -> Path:
    """Read one of our checkpoints and write it as a Hugging Face Apertus model."""
    step_dir = resolve_checkpoint(checkpoint)
    state = CheckpointManager.read(step_dir, optimizer=False)  # sharded: reads the weights only
    seq_len = state["config"]["training"]["seq_len"]
    args = ModelArgs(**state["model_shape"], max_seq_len=seq_len)
    return write_hf_checkpoint(state["model"], args, out_dir, dtype=dtype, tokenizer=tokenizer)
