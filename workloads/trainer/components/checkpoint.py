"""Asynchronous, atomic checkpoints.

Save = (1) snapshot: copy every tensor into reusable CPU buffers (pinned, non-blocking on CUDA) — the
only part training waits for; (2) a background thread writes the snapshot into `.tmp-step_N/`, fsyncs,
renames it to `step_N/` and only then points `latest` at it. A crash at any moment leaves either the old
`latest` or the new one, never a torn directory behind it; leftover `.tmp-*` directories are ignored
and removed. Rank 0 writes everything: model and optimizer state are gathered to it (DDP: already
replicated; FSDP: full state dict), and every rank's RNG state travels to it with all_gather_object.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from .state_io import (flatten_state, fsync_dir, read_tensors, replace_file_atomically, unflatten_state,
                       write_json, write_tensors)

logger = logging.getLogger(__name__)

LATEST = "latest"
TMP_PREFIX = ".tmp-"
TENSORS_FILE, STATE_FILE = "tensors.safetensors", "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the model being trained."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def young_interval(save_cost_s: float, mtbf_s: float, step_time_s: float) -> int:
    """Steps between checkpoints from Young's formula: T_opt ≈ √(2·C·MTBF), C = blocking save cost."""
    return max(1, round(math.sqrt(2.0 * save_cost_s * mtbf_s) / max(step_time_s, 1e-9)))


# ---------------------------------------------------------------------------------------------- state


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


def get_train_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    consumed_samples: int, model_shape: dict, config: dict) -> dict:
    """Everything a resume needs, as a tree (rank 0's copy is complete; other ranks' may be partial).

    Collective under FSDP (the full state dict is gathered to rank 0) and under any process group
    (RNG states are gathered): every rank must call it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
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
    expected, _ = get_state_dict(model, [], options=StateDictOptions(full_state_dict=True))
    for key, t in state["model"].items():  # same args, different code → still a clear error
        if key not in expected or tuple(expected[key].shape) != tuple(t.shape):
            raise CheckpointError(f"checkpoint {path}: tensor {key} {tuple(t.shape)} does not fit the model")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=True))
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank < len(state["rng"]):  # same world size: exact continuation
        set_rng_state(state["rng"][rank])
    return state["train"]


# ---------------------------------------------------------------------------------------------- files


@dataclass
class _Snapshot:
    step: int
    skeleton: Any
    tensors: dict[str, torch.Tensor]
    ready: torch.cuda.Event | None  # D2H copies done (CUDA); None on CPU


class CheckpointManager:
    """Decides when to save, snapshots, writes in the background, finds and reads `latest`."""

    def __init__(self, directory: str | Path, *, rank: int = 0, keep: int = 3, asynchronous: bool = True,
                 interval: int | str = 100, mtbf_s: float = 86_400.0, auto_first_step: int = 10):
        self.dir = Path(directory)
        self.rank, self.keep, self.asynchronous = rank, keep, asynchronous
        self.interval, self.mtbf_s = interval, mtbf_s
        self.next_auto_step = auto_first_step
        self.auto_first_step = auto_first_step
        self.last_saved_step: int | None = None
        self.last_stall_s = 0.0
        self._buffers: dict[str, torch.Tensor] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob(f"{TMP_PREFIX}*"):  # torn writes of a crashed run: never loaded
                shutil.rmtree(tmp, ignore_errors=True)

    # -- when

    def should_save(self, step: int) -> bool:
        """True when `step` is a checkpoint step (fixed interval, or Young's formula for 'auto')."""
        if self.interval == "auto":
            return step >= self.next_auto_step
        return step % int(self.interval) == 0

    def plan_next(self, step: int, stall_s: float, step_time_s: float) -> None:
        """With interval='auto', schedule the next save from the measured stall and step time."""
        if self.interval == "auto":
            n = young_interval(stall_s, self.mtbf_s, step_time_s)
            self.next_auto_step = step + n
            logger.info("checkpoint interval (Young): C=%.3fs MTBF=%.0fs step=%.3fs -> every %d steps",
                        stall_s, self.mtbf_s, step_time_s, n)

    def reset_schedule(self, step: int) -> None:
        """After a resume at `step`: 'auto' re-measures the cost auto_first_step steps later."""
        self.last_saved_step = step
        if self.interval == "auto":
            self.next_auto_step = step + self.auto_first_step

    # -- save

    def save(self, step: int, state: dict, *, block: bool = False) -> float:
        """Snapshot `state` and write it (in the background unless `block` or not asynchronous).

        Returns the seconds training was blocked. Only rank 0 writes; other ranks return at once.
        """
        t0 = time.perf_counter()
        self.wait()  # the previous write still reads the snapshot buffers
        if self.rank == 0 and self.last_saved_step != step:
            snapshot = self._snapshot(step, state)
            if self.asynchronous and not block:
                self._thread = threading.Thread(target=self._write_guarded, args=(snapshot,),
                                                name=f"ckpt-writer-{step}", daemon=True)
                self._thread.start()
            else:
                self._write(snapshot)
        self.last_saved_step = step
        self.last_stall_s = time.perf_counter() - t0
        return self.last_stall_s

    def wait(self) -> None:
        """Block until the background write (if any) is durable; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"background checkpoint write failed: {error!r}") from error

    def _snapshot(self, step: int, state: dict) -> _Snapshot:
        skeleton, tensors = flatten_state(state)
        copies: dict[str, torch.Tensor] = {}
        on_cuda = False
        for key, t in tensors.items():
            t = t.detach()
            buf = self._buffers.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
                self._buffers[key] = buf
            buf.copy_(t, non_blocking=t.is_cuda)
            on_cuda |= t.is_cuda
            copies[key] = buf
        ready = None
        if on_cuda:  # the writer waits for the copies; training does not
            ready = torch.cuda.Event()
            ready.record()
        return _Snapshot(step, skeleton, copies, ready)

    def _write_guarded(self, snapshot: _Snapshot) -> None:
        try:
            self._write(snapshot)
        except BaseException as e:  # surfaced by the next wait() on the training thread
            self._error = e

    def _write(self, snapshot: _Snapshot) -> None:
        if snapshot.ready is not None:
            snapshot.ready.synchronize()
        name = step_dir_name(snapshot.step)
        tmp, final = self.dir / f"{TMP_PREFIX}{name}", self.dir / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_tensors(tmp / TENSORS_FILE, snapshot.tensors)
        write_json(tmp / STATE_FILE, snapshot.skeleton)
        fsync_dir(tmp)
        if final.exists():  # a stale dir of the same step from a run that never pointed latest at it
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(self.dir)
        replace_file_atomically(self.dir / LATEST, name)  # the commit point
        self._prune(keep_name=name)

    def _prune(self, keep_name: str) -> None:
        complete = sorted(p for p in self.dir.glob("step_*") if p.is_dir())
        for old in complete[:-self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    # -- load

    def latest_path(self) -> Path | None:
        """The checkpoint `latest` points at, or None when there is none yet."""
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        path = self.dir / pointer.read_text().strip()
        if not (path / STATE_FILE).is_file() or not (path / TENSORS_FILE).is_file():
            raise CheckpointError(f"{pointer} points at {path}, which is missing or incomplete")
        return path

    @staticmethod
    def read(path: Path) -> dict:
        """Read a complete checkpoint directory into a state tree (tensors on CPU)."""
        try:
            skeleton = json.loads((path / STATE_FILE).read_text())
            tensors = read_tensors(path / TENSORS_FILE)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
        return unflatten_state(skeleton, tensors)

    def close(self) -> None:
        """Wait for the last write; call before exiting."""
        self.wait()
