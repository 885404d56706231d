"""Data-parallel helpers: joining a ``torchrun`` process group, and averaging over its processes.

Training inside a ``torch.distributed`` process group (e.g. started by ``torchrun``) takes every process's
share of each global batch; these helpers average the gradients (one all-reduce of a flat buffer per step,
as DDP does) and the per-step objectives that drive the annealing, so every process anneals identically
and all hold the same parameters.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import distributed as dist


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised ``torch.distributed`` process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def processes(device: torch.device) -> Iterator[tuple[int, int, torch.device]]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and leave it together at the end.

    gloo on CPU, nccl on GPUs (one per process, by LOCAL_RANK). Yields (rank, world size, device);
    (0, 1, device) for a single process, which joins nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
        dist.barrier()  # tear the group down together: a rank leaving early can abort its peer's gloo threads
    finally:
        dist.destroy_process_group()


def average_tensors(tensors: list[torch.Tensor], world: int) -> None:
    """All-reduce (mean) ``tensors`` in place over the process group, in one flat buffer."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def average_values(values: dict, world: int, device: torch.device) -> dict:
    """Every process's ``{key: float}`` averaged over the process group (in float64)."""
    keys = list(values)
    stacked = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / world).tolist()))
