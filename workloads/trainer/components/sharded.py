"""Sharded checkpoint files (FSDP2): every rank writes only its own shards, with torch.distributed.checkpoint.

Layout inside a step directory: `__<rank>_0.distcp` (one file per rank: that rank's shards of the model and
optimizer tensors) and `.metadata` (DCP's index: global shape and, for each shard, file and byte range).
DCP writes `.metadata` on the coordinator (rank 0) only after every rank's files were written and fsynced
and their results gathered (`_save_state_dict`: all_reduce(write_data → gather → finish → broadcast)),
so when `write_shards` returns on rank 0 the whole sharded part is durable.

Loading never unpickles code: the tensor records go through `torch.load(weights_only=True)` (DCP's own
reader) and `.metadata` through an unpickler that only builds DCP's metadata classes, torch.Size and
dtypes. DCP's collectives run on a separate gloo group (`checkpoint_group`): a background write must not
interleave its collectives with the training ones on the default group.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

METADATA_FILE = ".metadata"


@dataclass(frozen=True)
class ShardRef:
    """A tensor of a sharded checkpoint that was not read (CheckpointManager.read(..., shards=False)):
    `load_train_state` loads it shard by shard into the live model."""

    key: str  # its key in the checkpoint (flatten_state's path)
    shape: tuple[int, ...]  # global shape
    dtype: torch.dtype

_groups: dict[int, Any] = {}  # id(default group) -> its checkpoint group


def checkpoint_group():
    """The gloo process group DCP and the checksums coordinate on (created on first use; collective: every
    rank calls it from its main thread, in the same order — the resume's verification, or the first sharded
    save, does)."""
    key = id(dist.group.WORLD)
    if key not in _groups:
        _groups.clear()
        _groups[key] = dist.new_group(backend="gloo")
    return _groups[key]


def is_dtensor(t: Any) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "_local_tensor")


def cpu_copy(t: torch.Tensor, buf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy `t` (plain tensor or DTensor) into `buf` (allocated when missing or mismatched); returns
    (what DCP writes: the buffer, re-wrapped as a DTensor with t's mesh and placements; the buffer)."""
    local = t._local_tensor if is_dtensor(t) else t
    local = local.detach()
    if buf is None or buf.shape != local.shape or buf.dtype != local.dtype:
        buf = torch.empty(local.shape, dtype=local.dtype, pin_memory=local.is_cuda)
    buf.copy_(local, non_blocking=local.is_cuda)  # releases the GIL: the training thread keeps running
    if not is_dtensor(t):
        return buf, buf
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        return DTensor.from_local(buf, t.device_mesh, t.placements, run_check=False, shape=t.shape,
                                  stride=t.stride()), buf


def write_shards(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Collective: every rank writes its shards of `tensors` (CPU) into `directory`; returns once every
    rank's data and the metadata are durable (or raises on every rank if any rank failed)."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(directory, single_file_per_rank=True, sync_files=True, thread_count=1,
                                  overwrite=True)
    dcp.save(tensors, storage_writer=writer, process_group=checkpoint_group())


# ------------------------------------------------------------------------------------------------ read


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata dataclasses, torch.Size, dtypes, layouts, memory formats and paths (the
    checkpoint id); nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in {
                ("collections", "OrderedDict"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath")}:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None),
                                            (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}: refusing to load it")


@contextlib.contextmanager
def _plain_errors():
    """DCP raises CheckpointException, a BaseException: make it a RuntimeError callers can catch."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        raise RuntimeError(str(e)) from e


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            metadata = _MetadataUnpickler(io.BytesIO((Path(path) / METADATA_FILE).read_bytes())).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def shard_index(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{key: (global shape, dtype)} of every tensor in the sharded part of `path` (reads no tensor data)."""
    metadata = _reader(path).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in metadata.state_dict_metadata.items()
            if hasattr(v, "size")}


def read_shards(path: Path, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """All (or `keys`) tensors of the sharded part of `path`, whole, on CPU — in this process alone,
    whatever the world size that wrote them (no process group needed)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings(), _plain_errors():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ...: single process" is the point
        # as dcp_to_torch_save does: the planner rebuilds `out` from the metadata (dcp.load would keep
        # only the keys `out` already has, i.e. none)
        _load_state_dict(out, storage_reader=_reader(path), planner=_EmptyStateDictLoadPlanner(keys=keys),
                         no_dist=True)
    return out


def read_shards_into(path: Path, targets: dict[str, torch.Tensor]) -> None:
    """Collective: load into `targets` (DTensors of the live model/optimizer) in place; each rank reads only
    the byte ranges its shards need, whatever the world size that wrote them (DCP reshards)."""
    from torch.distributed.checkpoint import load

    with _plain_errors():
        load(targets, storage_reader=_reader(path), process_group=checkpoint_group())
