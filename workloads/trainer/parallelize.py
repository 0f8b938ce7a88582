"""How the model is distributed: process group from Slurm's or torchrun's environment, DDP or FSDP2,
optional torch.compile.

Slurm (inside `srun`): RANK=SLURM_PROCID, LOCAL_RANK=SLURM_LOCALID, WORLD_SIZE=SLURM_NTASKS,
MASTER_ADDR = first host of SLURM_JOB_NODELIST, MASTER_PORT derived from SLURM_JOB_ID (so concurrent jobs
sharing a node do not collide). torchrun sets RANK/WORLD_SIZE/MASTER_* itself and wins when present.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .config import ParallelConfig, TrainingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, read from the environment."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm


def first_host(nodelist: str) -> str:
    """First host of a Slurm nodelist ('nid[001-004,007]' → 'nid001'): python-hostlist, else scontrol."""
    try:
        import hostlist
    except ImportError:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                             text=True).stdout
        return out.split()[0]
    return hostlist.expand_hostlist(nodelist)[0]


def _first_count(tasks_per_node: str) -> int:
    """'4(x2),3' → 4: tasks on the first node, as Slurm writes SLURM_STEP_TASKS_PER_NODE."""
    return int(tasks_per_node.split(",")[0].split("(")[0])


def resolve_dist_env(env: Mapping[str, str]) -> DistEnv:
    """Read rank, world size and rendezvous address from torchrun's variables, else Slurm's (srun step)."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", 0)),
                       world_size=int(env["WORLD_SIZE"]),
                       local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
                       master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                       master_port=int(env.get("MASTER_PORT", 29500)), source="torchrun")
    # SLURM_STEP_ID is set by srun only: a plain `python` in the batch script is a single process.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1)))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "127.0.0.1")
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else 15000 + int(env.get("SLURM_JOB_ID", 0)) % 20000
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
        return DistEnv(rank=int(env["SLURM_PROCID"]), local_rank=int(env.get("SLURM_LOCALID", 0)),
                       world_size=world, local_world_size=_first_count(per_node), master_addr=addr,
                       master_port=port, source="slurm")
    return DistEnv()


@dataclass
class DistContext:
    """The initialised process: its place in the job, device and backend."""

    env: DistEnv
    device: torch.device
    backend: str | None  # None when single-process

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def init_distributed(training_config: TrainingConfig, parallel_config: ParallelConfig, *,
                     env: Mapping[str, str] | None = None) -> DistContext:
    """Pick the device (training.device), size CPU threads (training.num_threads), and join the process group
    (parallel.backend) when the job has several ranks, as `env` (default: os.environ) describes them."""
    device, backend, num_threads = training_config.device, parallel_config.backend, training_config.num_threads
    denv = resolve_dist_env(os.environ if env is None else env)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(denv.local_rank)
        dev = torch.device("cuda", denv.local_rank)
    else:
        dev = torch.device("cpu")
        # Ranks sharing a node split its cores; oversubscription makes every rank slower.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(num_threads or max(1, cores // denv.local_world_size))
    if denv.world_size == 1:
        return DistContext(denv, dev, None)
    chosen = backend if backend != "auto" else ("nccl" if use_cuda else "gloo")
    os.environ.setdefault("MASTER_ADDR", denv.master_addr)
    os.environ.setdefault("MASTER_PORT", str(denv.master_port))
    dist.init_process_group(chosen, init_method="env://", rank=denv.rank, world_size=denv.world_size,
                            device_id=dev if use_cuda else None)
    logger.info("rank %d/%d (%s) on %s, backend %s", denv.rank, denv.world_size, denv.source, dev, chosen)
    return DistContext(denv, dev, chosen)


def destroy_distributed(timeout_s: float = 60.0) -> None:
    """Leave the process group, if any, one side at a time.

    When every rank tears gloo down at once, a rank now and then aborts in it ("terminate called without an
    active exception", ~1 in 20 two-rank runs here), which fails the whole srun step. So the other ranks
    destroy their group first and say so through the rendezvous store; rank 0, which hosts the store, waits
    for them (bounded), then destroys its own.
    """
    if not dist.is_initialized():
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()  # outlives the group: we hold it
    if rank != 0:
        dist.destroy_process_group()
        store.set(f"strata/left/{rank}", "1")
        return
    try:
        store.wait([f"strata/left/{r}" for r in range(1, world)], timedelta(seconds=timeout_s))
    except (RuntimeError, dist.DistStoreError) as e:  # a peer died: leave anyway
        logger.warning("not every rank left the process group in %.0f s (%s); leaving", timeout_s, e)
    dist.destroy_process_group()


def apply_compile(model: nn.Module) -> None:
    """Compile each transformer block in place (keeps parameter names, unlike torch.compile(model))."""
    for block in model.layers:
        block.compile(fullgraph=True)


def apply_ddp(model: nn.Module, device: torch.device, bucket_cap_mb: float) -> nn.Module:
    """Wrap in DistributedDataParallel with the given gradient bucket size."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=True)


def apply_fsdp(model: nn.Module, device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard every block, then the root (embeddings, final norm, head), over all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for i, block in enumerate(model.layers):
        # The last block is resharded by the root right after, so keep it unsharded after forward.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(model.layers) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def uses_fsdp(parallel_config: ParallelConfig, *, world_size: int) -> bool:
    """True when the model is sharded with FSDP2: parallel.data_parallel='fsdp' and more than one rank."""
    return parallel_config.data_parallel == "fsdp" and world_size > 1


def uses_bf16(training_config: TrainingConfig, *, device: torch.device) -> bool:
    """True when training.mixed_precision='bf16' takes effect: on CUDA only (CPU runs fp32)."""
    return device.type == "cuda" and training_config.mixed_precision == "bf16"


def parallelize_model(model: nn.Module, parallel_config: ParallelConfig, training_config: TrainingConfig, *,
                      device: torch.device, world_size: int) -> nn.Module:
    """Apply torch.compile (training.compile), then DDP or FSDP2 (parallel.data_parallel) when there are
    several ranks; returns the module to train. FSDP2 keeps bf16 parameters under bf16 mixed precision."""
    if training_config.compile:
        apply_compile(model)
    if world_size == 1:
        return model
    if uses_fsdp(parallel_config, world_size=world_size):
        bf16 = uses_bf16(training_config, device=device)
        return apply_fsdp(model, device, torch.bfloat16 if bf16 else None)
    return apply_ddp(model, device, parallel_config.bucket_cap_mb)


def maybe_enable_amp(training_config: TrainingConfig, *, device: torch.device, fsdp: bool):
    """bf16 autocast for DDP and single-device runs under bf16 mixed precision, else a no-op context.

    FSDP2 casts parameters itself (MixedPrecisionPolicy, see `apply_fsdp`), so it needs no autocast.
    """
    if uses_bf16(training_config, device=device) and not fsdp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def maybe_no_sync(model: nn.Module, sync: bool):
    """Context that skips the gradient all-reduce/reduce-scatter on non-final micro-batches."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        @contextlib.contextmanager
        def _fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return _fsdp_no_sync()
    return contextlib.nullcontext()


class ReplicaMismatchError(RuntimeError):
    """Data-parallel replicas no longer hold the same weights."""


@torch.no_grad()
def check_replicas_agree(model: nn.Module) -> float:
    """Compare a float64 weight checksum across DDP ranks (as Megatron's weight-hash check does).

    Replicas start equal (DDP broadcasts rank 0's weights) and apply the same averaged gradients, so
    their checksums must be bit-identical; returns the checksum, raises ReplicaMismatchError otherwise.
    """
    local = float(torch.stack([p.detach().double().sum() + p.detach().double().abs().sum()
                               for p in model.parameters()]).sum())
    sums: list = [None] * dist.get_world_size()
    dist.all_gather_object(sums, local)
    if len(set(sums)) != 1:
        raise ReplicaMismatchError(f"data-parallel replicas diverged: weight checksums per rank {sums}")
    return local
