"""Asynchronous, atomic checkpoints.

Save = (1) snapshot: copy every tensor into reusable CPU buffers (pinned and non-blocking on CUDA);
(2) write the snapshot into `.tmp-step_N/`, fsync, rename it to `step_N/`, and only then point `latest`
at it. A crash at any moment leaves the old `latest` or the new one, never a torn directory behind it;
leftover `.tmp-*` directories are ignored and removed.

Asynchronous mode runs both in a background thread. Weights and optimizer state change only inside
`optimizer.step()`, so the copy may overlap the next forward and backward: a pre-step hook on the
optimizer (`attach`) waits for the copy to finish before the weights move. Training therefore stalls
only if the copy takes longer than a forward+backward, or if a save is due before the previous write
finished. Single process and DDP: rank 0 writes everything (see train_state.py for what is gathered to
it). FSDP2 (the state holds DTensors): every rank snapshots and writes only its own shards of the model and
optimizer tensors with torch.distributed.checkpoint (sharded.py), rank 0 adds the rest (RNG states of
every rank, position, config: `state.json` + a small `tensors.safetensors`) and commits once DCP's save
returned, i.e. once every rank's shards and DCP's `.metadata` are durable.

Checked, not trusted (manifest.py): the writer thread checksums every file (each rank its own shard files)
and writes `manifest.json` last; a resume verifies the checkpoint before loading a byte of it and, when it
is damaged, refuses naming the file and the newest intact older checkpoint, or falls back to that one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from ..config import CheckpointConfig
from .manifest import (
    ALGORITHM,
    MANIFEST_KEY,
    CheckpointDamaged,
    describe_files,
    describe_shard_files,
    verify_checkpoint,
    write_manifest,
)
from .sharded import (
    METADATA_FILE,
    ShardRef,
    checkpoint_group,
    cpu_copy,
    is_dtensor,
    read_shards,
    shard_index,
    write_shards,
)
from .state_io import (
    flatten_state,
    fsync_dir,
    read_tensors,
    replace_file_atomically,
    unflatten_state,
    write_json,
    write_tensors,
)
from .train_state import CheckpointError

logger = logging.getLogger(__name__)

LATEST = "latest"
TMP_PREFIX = ".tmp-"
TENSORS_FILE, STATE_FILE = "tensors.safetensors", "state.json"
SHARDS_KEY = "__shards__"  # in a sharded checkpoint's state.json: how its model/optimizer tensors are stored
_SHARDED_PREFIXES = ("/model/", "/optimizer/")  # flatten_state keys of the tensors DCP writes


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint of `step` (zero-padded so names sort by step)."""
    return f"step_{step:08d}"


def young_interval(save_cost_s: float, mtbf_s: float, step_time_s: float) -> int:
    """Steps between checkpoints from Young's formula: T_opt ≈ √(2·C·MTBF), C = blocking save cost."""
    return max(1, round(math.sqrt(2.0 * save_cost_s * mtbf_s) / max(step_time_s, 1e-9)))


def _warn_unverified(path: Path) -> None:
    logger.warning("checkpoint %s has no manifest (written before checksums were recorded): loading it "
                   "unverified", path)


def latest_path(directory: str | Path) -> Path | None:
    """The checkpoint that `<directory>/latest` points at, or None when there is none yet (for readers)."""
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file() or not (path / TENSORS_FILE).is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is missing or incomplete")
    return path


# ---------------------------------------------------------------------------------------------- files


@dataclass
class _Snapshot:
    step: int
    skeleton: Any
    tensors: dict[str, torch.Tensor]  # live tensors until copied, then the CPU buffers
    shards: dict[str, torch.Tensor] | None = None  # FSDP2: this rank's model/optimizer tensors (DTensors)
    copied: threading.Event = field(default_factory=threading.Event)
    cost_s: float = 0.0  # training time lost to this checkpoint so far


class CheckpointManager:
    """Decides when to save, snapshots, writes in the background, finds and reads `latest`.

    Configured by its own section, [checkpoint] (interval, keep, asynchronous, resume, on_damaged, dir, ...).
    """

    def __init__(self, checkpoint_config: CheckpointConfig, *, run_dir: str | Path, rank: int = 0):
        """`checkpoint_config` is the [checkpoint] section; `run_dir` (job.run_dir) holds `checkpoints/` unless
        checkpoint.dir names another directory; `rank` is this process's rank (0 writes, cleans and decides)."""
        self.config = checkpoint_config
        self.dir = Path(checkpoint_config.dir or Path(run_dir) / "checkpoints")
        self.rank = rank
        self.next_auto_step = checkpoint_config.auto_first_step
        self.last_saved_step: int | None = None
        self.last_write_s = 0.0  # duration of the last background write
        self._stall_s = 0.0  # training time lost to checkpoints since consume_stall()
        self._step_time_s = 1.0
        self._buffers: dict[str, torch.Tensor] = {}
        self._pending: _Snapshot | None = None  # snapshot whose copy training must wait for
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for tmp in self.dir.glob(f"{TMP_PREFIX}*"):  # torn writes of a crashed run: never loaded
                shutil.rmtree(tmp, ignore_errors=True)

    # -- when

    @property
    def enabled(self) -> bool:
        """checkpoint.enabled: whether the trainer writes checkpoints at all."""
        return self.config.enabled

    def should_save(self, step: int) -> bool:
        """True when `step` is a checkpoint step (fixed interval, or Young's formula for 'auto').

        With 'auto' only rank 0 measures the cost: the trainer broadcasts rank 0's answer.
        """
        if self.config.interval == "auto":
            return step >= self.next_auto_step
        return step % int(self.config.interval) == 0

    def _plan_next(self, snapshot: _Snapshot) -> None:
        """interval='auto': next save from Young's formula with this save's measured cost, but never sooner
        than the disk can write a checkpoint (else every save would wait for the previous one)."""
        if self.config.interval != "auto":
            return
        n = young_interval(snapshot.cost_s, self.config.mtbf_s, self._step_time_s)
        n = max(n, math.ceil(self.last_write_s / self._step_time_s))
        self.next_auto_step = snapshot.step + n
        logger.info("checkpoint interval (Young): C=%.3fs MTBF=%.0fs step=%.3fs -> every %d steps",
                    snapshot.cost_s, self.config.mtbf_s, self._step_time_s, n)

    def reset_schedule(self, step: int) -> None:
        """After a resume at `step`: 'auto' re-measures the cost auto_first_step steps later."""
        self.last_saved_step = step
        if self.config.interval == "auto":
            self.next_auto_step = step + self.config.auto_first_step

    def consume_stall(self) -> float:
        """Seconds training was blocked by checkpoints since the last call (for the metrics line)."""
        stall, self._stall_s = self._stall_s, 0.0
        return stall

    # -- save

    def attach(self, optimizer: torch.optim.Optimizer):
        """Make `optimizer.step()` wait until a pending snapshot has copied the weights it will change.

        Returns the hook handle (`.remove()` detaches)."""
        return optimizer.register_step_pre_hook(lambda *_: self.wait_for_snapshot())

    def wait_for_snapshot(self) -> None:
        """Block until the pending snapshot copy is done (no-op when there is none)."""
        snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        t0 = time.perf_counter()
        snapshot.copied.wait()
        waited = time.perf_counter() - t0
        snapshot.cost_s += waited
        self._stall_s += waited
        self._plan_next(snapshot)

    def save(self, step: int, state: dict, *, block: bool = False, step_time_s: float | None = None) -> float:
        """Checkpoint `state` as step `step`; returns the seconds this call blocked.

        Asynchronous (and not `block`): returns at once; the copy and the write run in a background thread
        and the attached optimizer waits for the copy. Otherwise copies and writes before returning.
        Single process / DDP: only rank 0 writes; other ranks return at once. Sharded (FSDP2: the model
        state holds DTensors): collective, every rank calls it and writes its own shards.
        """
        t0 = time.perf_counter()
        if step_time_s:
            self._step_time_s = step_time_s
        self.wait()  # the previous write still reads the snapshot buffers
        sharded = any(is_dtensor(t) for t in state["model"].values())
        if (self.rank == 0 or sharded) and self.last_saved_step != step:
            skeleton, tensors = flatten_state(state)
            snapshot = _Snapshot(step, {**skeleton, MANIFEST_KEY: ALGORITHM}, tensors)
            if sharded:
                checkpoint_group()  # collective: created here on the main thread, used by the writer thread
                snapshot.shards = {k: t for k, t in tensors.items() if k.startswith(_SHARDED_PREFIXES)}
                snapshot.tensors = {k: t for k, t in tensors.items()
                                    if self.rank == 0 and not k.startswith(_SHARDED_PREFIXES)}
                snapshot.skeleton = {**snapshot.skeleton,
                                     SHARDS_KEY: {"format": "torch.distributed.checkpoint",
                                                  "world_size": torch.distributed.get_world_size()}}
            if self.config.asynchronous and not block:
                self._pending = snapshot
                self._thread = threading.Thread(target=self._copy_and_write, args=(snapshot,),
                                                name=f"ckpt-writer-{step}", daemon=True)
                self._thread.start()
            else:
                self._copy(snapshot)
                self._write(snapshot)
        self.last_saved_step = step
        blocked = time.perf_counter() - t0
        self._stall_s += blocked
        if self._pending is not None:  # the cost is complete once the optimizer has waited for the copy
            self._pending.cost_s += blocked
        elif self.rank == 0 and not block:
            self._plan_next(_Snapshot(step, None, {}, cost_s=blocked))
        return blocked

    def wait(self) -> None:
        """Block until the background write (if any) is durable; re-raise its error."""
        self.wait_for_snapshot()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"background checkpoint write failed: {error!r}") from error

    def _copy(self, snapshot: _Snapshot) -> None:
        """Copy the live tensors into reusable CPU buffers; on CUDA, wait for the device-to-host copies."""
        live = [*snapshot.tensors.values(), *(snapshot.shards or {}).values()]
        device = next((t.device for t in live if t.is_cuda), None)
        # A new thread starts on cuda:0; copies and the event must use this rank's device and stream.
        with torch.cuda.device(device) if device is not None else contextlib.nullcontext():
            copies: dict[str, torch.Tensor] = {}
            for key, t in snapshot.tensors.items():
                t = t.detach()
                buf = self._buffers.get(key)
                if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                    buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
                    self._buffers[key] = buf
                buf.copy_(t, non_blocking=t.is_cuda)  # releases the GIL: the training thread keeps running
                copies[key] = buf
            if snapshot.shards is not None:  # DTensors: copy the local shard, keep mesh and placements
                shard_copies: dict[str, torch.Tensor] = {}
                for key, t in snapshot.shards.items():
                    shard_copies[key], self._buffers[key] = cpu_copy(t, self._buffers.get(key))
                snapshot.shards = shard_copies
            done = None
            if device is not None:
                done = torch.cuda.Event()
                done.record()  # behind the copies on the default stream, ahead of the optimizer's kernels
            snapshot.tensors = copies
            snapshot.copied.set()  # the optimizer may launch its kernels: the stream orders them after us
            if done is not None:
                done.synchronize()  # the data has landed in host memory before the writer reads it

    def _copy_and_write(self, snapshot: _Snapshot) -> None:
        try:
            self._copy(snapshot)
            t0 = time.perf_counter()
            self._write(snapshot)
            self.last_write_s = time.perf_counter() - t0
        except BaseException as e:  # surfaced by the next wait() on the training thread
            self._error = e
        finally:
            snapshot.copied.set()  # never leave the optimizer waiting

    def _write(self, snapshot: _Snapshot) -> None:
        name = step_dir_name(snapshot.step)
        tmp, final = self.dir / f"{TMP_PREFIX}{name}", self.dir / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        files: dict[str, dict] = {}
        if snapshot.shards is not None:
            # Collective. No rank writes a byte before DCP's planning round has passed rank 0, i.e. after
            # the clean-up above; it returns once every rank's shards and .metadata are durable.
            write_shards(tmp, snapshot.shards)
            files = describe_shard_files(tmp)  # collective: each rank hashes its own files, in parallel
            if self.rank != 0:
                return
        write_tensors(tmp / TENSORS_FILE, snapshot.tensors)
        write_json(tmp / STATE_FILE, snapshot.skeleton)
        # Hashed from the page cache after the fsyncs; the manifest goes last: its presence means complete.
        write_manifest(tmp, snapshot.step, {**files, **describe_files(tmp, [TENSORS_FILE, STATE_FILE])})
        fsync_dir(tmp)
        if final.exists():  # a stale dir of the same step from a run that never pointed latest at it
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(self.dir)
        replace_file_atomically(self.dir / LATEST, name)  # the commit point
        self._prune(keep_name=name)

    def _prune(self, keep_name: str) -> None:
        complete = sorted(p for p in self.dir.glob("step_*") if p.is_dir())
        for old in complete[:-self.config.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    # -- load

    def latest_path(self) -> Path | None:
        """The checkpoint `latest` points at, or None when there is none yet."""
        return latest_path(self.dir)

    def resume_path(self) -> Path | None:
        """The verified checkpoint to resume from: `latest`'s, or None when there is none yet (or
        checkpoint.resume is false).

        Damaged (a file missing or not as written), per checkpoint.on_damaged: 'refuse' raises CheckpointError
        naming the file and the newest intact older checkpoint; 'fallback' resumes from that one, with a
        warning. Collective under a process group: every rank hashes a share of the files and all agree.
        """
        pointer = self.dir / LATEST
        if not self.config.resume or not pointer.is_file():
            return None
        collective = dist.is_initialized()
        names = [pointer.read_text(errors="replace").strip(),
                 sorted((p.name for p in self.dir.glob("step_*") if p.is_dir()), reverse=True)]
        if collective:  # one list for every rank, whatever each one's view of the directory
            dist.broadcast_object_list(names, src=0, group=checkpoint_group())
        target, steps = names
        damaged: list[CheckpointError] = []
        if target in steps:
            candidates = [target, *(s for s in steps if s < target)]  # newer ones were never committed
        else:
            damaged.append(CheckpointError(f"{pointer} names {target!r}, which is not a checkpoint directory "
                                           f"in {self.dir}"))
            candidates = steps
        for name in candidates:
            path = self.dir / name
            try:
                verified = verify_checkpoint(path, collective=collective)
            except CheckpointDamaged as e:
                damaged.append(e)
                continue
            if self.rank == 0 and not verified:
                _warn_unverified(path)
            if not damaged:
                return path
            if self.config.on_damaged == "fallback":
                if self.rank == 0:
                    for e in damaged:
                        logger.warning("%s; skipped (checkpoint.on_damaged=fallback)", e)
                    logger.warning("resuming from %s, the newest intact checkpoint", path)
                return path
            raise CheckpointError(f"{damaged[0]}; {name} is intact: to resume from it, rerun with "
                                  f"--checkpoint.on_damaged=fallback")
        raise CheckpointError(f"{damaged[0]}; no older checkpoint in {self.dir} is intact: restore the files "
                              f"from a copy, or start afresh with another --checkpoint.dir")

    @staticmethod
    def read(path: Path, *, shards: bool = True, optimizer: bool = True, verify: bool = True) -> dict:
        """Read a complete checkpoint directory into a state tree (tensors on CPU).

        A sharded (FSDP2) checkpoint is read whole in this process, whatever world size wrote it, unless
        `shards=False`: then its model/optimizer tensors are `ShardRef`s (key, global shape, dtype) for
        `load_train_state` to load shard by shard. `optimizer=False` leaves a sharded checkpoint's optimizer
        tensors as ShardRefs (export needs the weights only). `verify`: check every file against the manifest
        first (CheckpointDamaged names a bad one); `resume_path` has done so already.
        """
        if verify and not verify_checkpoint(path):
            _warn_unverified(path)
        try:  # an unverified (pre-manifest) checkpoint can still be damaged: one line, not a traceback
            skeleton = json.loads((path / STATE_FILE).read_text())
            tensors = read_tensors(path / TENSORS_FILE)
            layout = None
            if isinstance(skeleton, dict):
                skeleton.pop(MANIFEST_KEY, None)
                layout = skeleton.pop(SHARDS_KEY, None)
            if layout is not None:
                if not (path / METADATA_FILE).is_file():
                    raise OSError(f"{path / METADATA_FILE} is missing")
                refs = {k: ShardRef(k, *v) for k, v in shard_index(path).items()}
                wanted = {k for k in refs if shards and (optimizer or k.startswith("/model/"))}
                tensors.update({**refs, **(read_shards(path, keys=wanted) if wanted else {})})
            return unflatten_state(skeleton, tensors)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError,
                SafetensorError) as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e

    def close(self) -> None:
        """Wait for the last write; call before exiting."""
        self.wait()
