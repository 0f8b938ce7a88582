"""Batches for the training loop: each rank reads its own disjoint slice of every global batch.

The data position is one integer, `consumed_samples`: step s of a run with global batch G reads samples
[consumed, consumed + G) of the dataset, rank r the contiguous block r·(micro·accum) … of it. Saving
that integer in the checkpoint makes a resume continue with exactly the next samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .config import DataConfig, TrainingConfig
from .data import DataError, build_train_dataset
from .data.goldfish import goldfish_mask


class ShardedBatchLoader:
    """Turns (consumed_samples, micro-batch index) into this rank's (inputs, labels) on the device.

    `goldfish` = (k, h) applies the Goldfish loss: the labels it drops are set to -100 (ignored by the loss).
    """

    def __init__(self, dataset, *, rank: int, world_size: int, micro_batch_size: int, grad_accum_steps: int,
                 vocab_size: int, device: torch.device, goldfish: tuple[int, int] | None = None):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self.micro, self.accum, self.vocab_size, self.device = micro_batch_size, grad_accum_steps, vocab_size, device
        self.goldfish = goldfish

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.micro * self.accum * self.world_size

    def sample_ids(self, consumed_samples: int, micro_step: int) -> range:
        """Dataset indices of this rank's micro-batch `micro_step` in the step starting at `consumed_samples`."""
        start = consumed_samples + self.rank * self.micro * self.accum + micro_step * self.micro
        return range(start, start + self.micro)

    def get(self, consumed_samples: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), each (B, T) int64 on the device; y is x shifted left by one token (-100 where Goldfish
        drops a label)."""
        ids = self.sample_ids(consumed_samples, micro_step)
        if ids.stop > len(self.dataset):
            raise DataError(f"the dataset holds {len(self.dataset)} samples; step needs sample {ids.stop - 1}")
        batch = np.stack([self.dataset[i] for i in ids])  # (B, T+1)
        top = int(batch.max())
        if top >= self.vocab_size:  # fail here, not as an opaque device-side index error
            raise DataError(f"token id {top} in samples {ids.start}..{ids.stop - 1} is outside the model "
                            f"vocabulary ({self.vocab_size}); set model.vocab_size to cover the tokenizer")
        tokens = torch.from_numpy(batch.astype(np.int64, copy=False))
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        x, y = tokens[:, :-1], tokens[:, 1:]
        if self.goldfish is not None:
            y = y.masked_fill(~goldfish_mask(y, *self.goldfish), -100)
        return x, y


def resolve_data_paths(data_config: DataConfig, *, run_dir: Path, rank: int) -> list[str]:
    """`data.paths`, or (when empty) the bundled sample tokenized once into <run_dir>/data by rank 0."""
    if data_config.paths:
        return list(data_config.paths)
    prefix = [None]
    if rank == 0:
        from .data.prepare import prepare_sample_dataset

        prefix[0] = str(prepare_sample_dataset(run_dir / "data"))
    if dist.is_initialized():
        dist.broadcast_object_list(prefix, src=0)
    return [prefix[0]]


def build_loader(data_config: DataConfig, training_config: TrainingConfig, *, seed: int, run_dir: Path, rank: int,
                 world_size: int, vocab_size: int, device: torch.device) -> ShardedBatchLoader:
    """The dataset of the [data] section sized for the whole run, and this rank's loader over it (with the
    Goldfish loss when data.goldfish is set).

    [training] gives the batch geometry (seq_len, micro_batch_size, grad_accum_steps) and max_steps, so the
    dataset holds max_steps global batches; `seed` (job.seed) orders it; indices are cached in data.cache_dir
    (default <run_dir>/data_cache); token ids must be below `vocab_size`.
    """
    paths = resolve_data_paths(data_config, run_dir=run_dir, rank=rank)
    t = training_config
    global_batch = t.micro_batch_size * t.grad_accum_steps * world_size
    cache_dir = data_config.cache_dir or str(run_dir / "data_cache")
    size = t.max_steps * global_batch

    def build():
        return build_train_dataset(paths, data_config.weights, t.seq_len, size, seed, cache_dir)

    # Rank 0 builds and caches the indices first; the others then only read them. A data error on
    # rank 0 is sent to every rank so that all of them stop with it instead of hanging in a barrier.
    dataset, error = None, [None]
    if rank == 0:
        try:
            dataset = build()
        except DataError as e:
            if not dist.is_initialized():
                raise
            error[0] = str(e)
    if dist.is_initialized():
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise DataError(error[0])
    if dataset is None:
        dataset = build()
    goldfish = (data_config.goldfish_k, data_config.goldfish_h) if data_config.goldfish else None
    return ShardedBatchLoader(dataset, rank=rank, world_size=world_size, micro_batch_size=t.micro_batch_size,
                              grad_accum_steps=t.grad_accum_steps, vocab_size=vocab_size, device=device,
                              goldfish=goldfish)
