"""What a checkpoint holds: model, optimizer, RNG states, data position, config — as one tree.

Model and optimizer states are keyed by parameter name (FQN) on every path, so a checkpoint written by
one data-parallel layout (single process, DDP, FSDP2) loads into another.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the model being trained."""


def get_rng_state() -> dict:
    """Every RNG a training step can touch: Python, NumPy, torch CPU and all CUDA devices."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_fsdp(model: torch.nn.Module) -> bool:
    return hasattr(model, "set_requires_gradient_sync")  # FSDP2's FSDPModule


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP wrapper


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """FQN of each parameter in the order optimizer.state_dict() numbers them."""
    names = {id(p): n for n, p in _bare(model).named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def get_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts keyed by parameter name (FQN).

    Single process / DDP: the live tensors (the snapshot copies them). FSDP2: gathered to rank 0 on CPU
    with torch.distributed.checkpoint's state-dict helpers (imported lazily: they cost a second).
    """
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = _param_names(model, optimizer)
    osd = optimizer.state_dict()
    osd = {"state": {names[i]: s for i, s in osd["state"].items()},
           "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}
    return _bare(model).state_dict(), osd


def set_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict,
                          optim_sd: dict) -> None:
    """Inverse of `get_model_optim_state` (strict: every key must match)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True, strict=True))
        return
    _bare(model).load_state_dict(model_sd, strict=True)
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    optimizer.load_state_dict({
        "state": {index[name]: s for name, s in optim_sd["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_sd["param_groups"]]})


def get_train_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    consumed_samples: int, model_shape: dict, config: dict) -> dict:
    """Everything a resume needs, as a tree (rank 0's copy is complete).

    Collective under FSDP (the full state dict is gathered to rank 0) and under any process group
    (RNG states are gathered): every rank must call it.
    """
    model_sd, optim_sd = get_model_optim_state(model, optimizer)
    rng = get_rng_state()
    if dist.is_initialized():
        rngs: list = [None] * dist.get_world_size()
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    return {"model": model_sd, "optimizer": optim_sd, "rng": rngs, "model_shape": model_shape,
            "config": config, "train": {"step": step, "consumed_samples": consumed_samples}}


def _describe_mismatch(saved: dict, current: dict) -> str:
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint but {current.get(k)!r} now"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    return "; ".join(diffs)


def load_train_state(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                     model_shape: dict, path: Path) -> dict:
    """Load model, optimizer and this rank's RNG from `state`; returns its `train` section.

    A checkpoint written for another model shape raises CheckpointError before anything is touched.
    """
    if state["model_shape"] != model_shape:
        raise CheckpointError(f"checkpoint {path} was written for a different model: "
                              f"{_describe_mismatch(state['model_shape'], model_shape)}. "
                              f"Use the original model config, or another checkpoint.dir / job.run_dir.")
    expected = {n: tuple(p.shape) for n, p in _bare(model).named_parameters()}  # global shapes, even sharded
    for key, t in state["model"].items():  # same args but different code: still a clear error
        if key in expected and expected[key] != tuple(t.shape):
            raise CheckpointError(f"checkpoint {path}: tensor {key} has shape {tuple(t.shape)}, "
                                  f"the model expects {expected[key]}")
    try:
        set_model_optim_state(model, optimizer, state["model"], state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from e
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank < len(state["rng"]):  # same world size: exact continuation
        set_rng_state(state["rng"][rank])
    return state["train"]
