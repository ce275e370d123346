"""Data-parallel training under ``torchrun``: setup and collective helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def init_distributed() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    One process per GPU with NCCL when CUDA is available, gloo on CPUs.
    Without ``WORLD_SIZE > 1`` this is a single process and does nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    rank = torch_dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistContext(rank, torch_dist.get_world_size(), device)


def all_ranks_max(ctx: DistContext, *values: float) -> list[float]:
    """The largest of each value over all ranks: every rank gets the same numbers."""
    if ctx.world <= 1:
        return [float(v) for v in values]
    flags = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    torch_dist.all_reduce(flags, op=torch_dist.ReduceOp.MAX)
    return [float(v) for v in flags.tolist()]


def all_ranks_stop(ctx: DistContext, stop: bool) -> bool:
    """True on every rank as soon as any rank asks to stop (all stay in step)."""
    return bool(all_ranks_max(ctx, 1.0 if stop else 0.0)[0])
