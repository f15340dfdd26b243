"""The few collective operations the training loop needs, and the unwrapping of a DDP model: one place
for each, so every rank takes the same decision the same way."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """Where a tensor must live for this process group's collectives: NCCL (GPU workers) reduces only
    accelerator tensors, gloo (CPU workers) only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def all_reduce(value: float, op) -> float:
    """``value`` reduced over all ranks with ``op`` (a ``dist.ReduceOp``); itself on one rank."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=op)
    return float(t.item())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (``prepare_model``), or the model itself."""
    return model.module if hasattr(model, "module") else model
