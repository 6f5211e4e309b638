"""Multi-process training with torchrun (DistributedDataParallel).

Launch the usual command under torchrun and every process trains one replica:

    torchrun --standalone --nproc_per_node 2 -m picollm_helpers --models transformer ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `setup()` reads them and joins the process
group (NCCL when the processes drive GPUs, gloo on CPU). Each global batch of cfg.batch_size
examples is split across the ranks, so a run on N processes takes the same optimizer steps
as a single process with the same batch_size. Only rank 0 prints, plots and writes files.
Without those variables everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The layout torchrun announces through the environment (1 process when absent)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    world_size=int(os.environ.get("WORLD_SIZE", 1)))


def info() -> DistInfo:
    """The layout of the running process group, or a single process if there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def setup(device_id: str = "auto") -> tuple[DistInfo, torch.device | None]:
    """Join the process group if launched by torchrun; idempotent.

    Returns (info, device): device is this rank's device (cuda:LOCAL_RANK with NCCL, cpu with
    gloo), or None when running as a single process (the caller then picks the device).
    """
    env = env_info()
    if not env.enabled:
        return env, None
    use_cuda = torch.cuda.is_available() and (str(device_id) == "auto" or str(device_id).startswith("cuda"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", env.local_rank) if use_cuda else torch.device("cpu")
    return info(), device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place); the identity in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    """Wait for every rank, then leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
