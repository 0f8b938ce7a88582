"""What must hold before a run writes anything: the device exists, the data is there, the outputs can be made.

`check_run(cfg)` runs before the process group, the run dir and `config.json` (see `train.run`), so a
refusal (ConfigError, exit 2) leaves the file system as it found it. Every rank checks for itself: the
files are on a shared file system and each rank has its own GPUs, so they all reach the same answer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import ConfigError, DataConfig, ParallelConfig, TrainerConfig, TrainingConfig
from .data import DataError, IndexedDataset, normalize_weights
from .data.indexed import dataset_paths
from .parallelize import resolve_dist_env


def check_device(training_config: TrainingConfig, parallel_config: ParallelConfig, env: Mapping[str, str]) -> None:
    """training.device / parallel.backend must be usable here (else torch fails deep in cuda init)."""
    device, backend, host = training_config.device, parallel_config.backend, socket.gethostname()
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        why = f"torch on {host} is built without CUDA" if torch.version.cuda is None else f"{host} has no CUDA GPU"
        raise ConfigError(f"training.device='cuda' but {why}; use --training.device=cpu (or auto), "
                          "or run on a GPU node")
    use_cuda = device == "cuda" or (device == "auto" and cuda)
    if backend == "nccl" and not use_cuda:
        raise ConfigError(f"parallel.backend='nccl' needs CUDA but this run is on CPU (training.device={device!r} "
                          f"on {host}); use --parallel.backend=gloo (or auto)")
    if use_cuda:
        local_rank, count = resolve_dist_env(env).local_rank, torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"this task is local rank {local_rank} but {host} shows it {count} GPU(s); start at "
                              f"most {count} task(s) per node, each seeing all the node's GPUs "
                              "(e.g. srun --ntasks-per-node=N with N = GPUs per node)")


def check_data(data_config: DataConfig) -> None:
    """Every data.paths prefix is a readable, non-empty .bin/.idx pair; the blend weights are usable."""
    for i, prefix in enumerate(data_config.paths):
        missing = [p.name for p in dataset_paths(prefix) if not p.is_file()]
        if missing:
            raise ConfigError(f"data.paths[{i}]={prefix!r}: no {' or '.join(missing)}; give the prefix of a "
                              "tokenized dataset (PREFIX.bin + PREFIX.idx, as `strata tokenize --output-prefix "
                              "PREFIX` writes), or leave data.paths empty for the bundled sample")
        try:
            tokens = IndexedDataset(prefix).num_tokens  # reads the index header only (memory-mapped)
        except DataError as e:
            raise ConfigError(f"data.paths[{i}]: {e}") from None
        if tokens == 0:
            raise ConfigError(f"data.paths[{i}]={prefix!r} holds no tokens; tokenize non-empty documents into it")
    if data_config.weights is not None:
        try:
            normalize_weights(data_config.weights, len(data_config.paths))
        except DataError as e:
            raise ConfigError(f"data.weights: {e}") from None


def check_creatable(key: str, path: str | os.PathLike, *, directory: bool) -> None:
    """`path` (named by config `key`) exists as the right kind, or its nearest existing parent is writable."""
    path = Path(path)
    if path.exists():
        if path.is_dir() != directory:
            kind = "a directory" if directory else "a file"
            raise ConfigError(f"{key}={str(path)!r} exists but is not {kind}; choose another path")
        return
    parent = next(p for p in path.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(f"{key}={str(path)!r}: {parent} is a file, not a directory; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(path)!r}: cannot create it, {parent} is not writable by this user; "
                          "choose a path you can write")


def check_run(cfg: TrainerConfig, env: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError, naming the key and a fix, for anything that would stop this run after it wrote.

    Takes the whole tree, as the config's own validation does: the output paths come from several sections.
    """
    check_device(cfg.training, cfg.parallel, os.environ if env is None else env)
    check_data(cfg.data)
    run_dir = Path(cfg.job.run_dir)
    check_creatable("job.run_dir", run_dir, directory=True)
    for key, path, directory in (("data.cache_dir", cfg.data.cache_dir, True),
                                 ("checkpoint.dir", cfg.checkpoint.dir, True),
                                 ("metrics.jsonl", cfg.metrics.jsonl, False)):
        if path is not None:
            check_creatable(key, path, directory=directory)
