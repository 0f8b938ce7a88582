"""What a checkpoint holds: model, optimizer, RNG states, data position, config — as one tree.

Model and optimizer states are keyed by parameter name (FQN) on every path, so a checkpoint written by
one data-parallel layout (single process, DDP, FSDP2) loads into another. Under FSDP2 the model and
optimizer tensors stay sharded (DTensors: each rank holds and writes its own shards).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .sharded import ShardRef
from .state_io import flatten_state


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
    """Model and optimizer state dicts keyed by parameter name (FQN).

    Single process / DDP: the live, full tensors (the snapshot copies them). FSDP2: the live DTensors, each
    rank holding only its shards (torch.distributed.checkpoint's state-dict helpers, imported lazily: they
    cost a second); nothing is gathered.
    """
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        return get_state_dict(model, optimizer)
    names = _param_names(model, optimizer)
    osd = optimizer.state_dict()
    osd = {"state": {names[i]: s for i, s in osd["state"].items()},
           "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}
    return _bare(model).state_dict(), osd


def _refs(tree: Any) -> dict[str, ShardRef]:
    if isinstance(tree, ShardRef):
        return {tree.key: tree}
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    return {k: v for item in items for k, v in _refs(item).items()}


def _resolve(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`tree` with every ShardRef replaced by tensors[ref.key]."""
    if isinstance(tree, ShardRef):
        return tensors[tree.key]
    if isinstance(tree, dict):
        return {k: _resolve(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_resolve(v, tensors) for v in tree)
    return tree


def _load_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                 path: Path) -> None:
    """FSDP2 from a sharded checkpoint: every rank reads only its own shards (DCP reshards when the world
    size differs), in place into the live DTensors; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    from .sharded import read_shards_into

    refs = _refs([model_sd, optim_sd])
    live_model, live_optim = get_state_dict(model, optimizer)  # this rank's shards; initialises Adam's state
    _, targets = flatten_state({"model": live_model, "optimizer": {"state": live_optim["state"]}})
    if set(targets) != set(refs):
        missing, extra = sorted(set(targets) - set(refs)), sorted(set(refs) - set(targets))
        raise CheckpointError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    for key, t in targets.items():
        if tuple(t.shape) != refs[key].shape or t.dtype != refs[key].dtype:
            raise CheckpointError(f"checkpoint {path}: {key} is {refs[key].shape} {refs[key].dtype}, "
                                  f"the model has {tuple(t.shape)} {t.dtype}")
    read_shards_into(path, targets)
    set_state_dict(model, optimizer, model_state_dict=_resolve(model_sd, targets),
                   optim_state_dict=_resolve(optim_sd, targets), options=StateDictOptions(strict=True))


def set_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict,
                          optim_sd: dict, path: Path | None = None) -> None:
    """Inverse of `get_model_optim_state` (strict: every key must match).

    Full tensors load into any layout. ShardRefs (a sharded checkpoint read with shards=False, at `path`)
    load shard by shard under FSDP2, and are read whole otherwise."""
    if _refs([model_sd, optim_sd]):
        assert path is not None, "ShardRefs need the checkpoint path"
        if _is_fsdp(model):
            return _load_shards(model, optimizer, model_sd, optim_sd, path)
        from .sharded import read_shards

        tensors = read_shards(path, keys=set(_refs([model_sd, optim_sd])))
        model_sd, optim_sd = _resolve(model_sd, tensors), _resolve(optim_sd, tensors)
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

    Collective under any process group (RNG states are gathered to every rank): every rank must call it.
    Under FSDP2 "model" and "optimizer" hold this rank's shards (DTensors).
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
        set_model_optim_state(model, optimizer, state["model"], state["optimizer"], path)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {e}") from e
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank < len(state["rng"]):  # same world size: exact continuation
        set_rng_state(state["rng"][rank])
    return state["train"]
