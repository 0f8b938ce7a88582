"""Pickle-free, durable files for checkpoints.

A checkpoint state is a tree of dicts, lists, tuples, scalars, numpy arrays and tensors. `flatten_state`
splits it into a JSON skeleton and a flat dict of tensors; tensors go to one file in the safetensors
layout (8-byte header length, JSON header, raw bytes), written straight from tensor memory so the
writer thread releases the GIL during the big writes. Loading never runs pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_MARKERS = ("__tensor__", "__tuple__", "__map__", "__ndarray__")


def flatten_state(obj: Any, prefix: str = "", tensors: dict[str, torch.Tensor] | None = None
                  ) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able skeleton, {key: tensor}); `unflatten_state` inverts it exactly."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}, tensors
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}, tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _MARKERS for k in obj):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors)[0] for k, v in obj.items()}, tensors
        # Non-string keys (optimizer state is keyed by int in plain state_dict()) keep their type.
        return {"__map__": [[k, flatten_state(v, f"{prefix}/{k}", tensors)[0]] for k, v in obj.items()]}, tensors
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}/{i}", tensors)[0] for i, v in enumerate(obj)]}, tensors
    if isinstance(obj, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors)[0] for i, v in enumerate(obj)], tensors
    assert obj is None or isinstance(obj, (bool, int, float, str)), f"cannot checkpoint {type(obj)} at {prefix}"
    return obj, tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the tree written by `flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return np.asarray(skeleton["__ndarray__"], dtype=skeleton["dtype"])
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__map__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__map__"]}
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write CPU tensors as a safetensors file and fsync it; returns bytes written."""
    header: dict[str, Any] = {}
    offset = 0
    for key, t in tensors.items():
        assert t.device.type == "cpu" and t.is_contiguous(), f"{key}: snapshot must be contiguous CPU memory"
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            if t.numel():
                # file.write on a memoryview releases the GIL: the training thread keeps running.
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(raw) + offset


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a tensor file written by `write_tensors`."""
    return load_file(str(path))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON and fsync it."""
    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def replace_file_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old content or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
