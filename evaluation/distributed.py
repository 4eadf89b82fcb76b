"""Questions split across ranks and gathered back, under ``accelerate launch`` or ``torchrun``.

Both launchers set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and a rendezvous address; we join (or reuse) a
``torch.distributed`` process group -- NCCL on GPUs, gloo on CPU -- and need only ``all_gather_object``, so
accelerate's training state is not involved. Rank r takes questions r, r + world, …; every rank generates with
the same batching rules, and since batched greedy generation equals batch-size-1 generation
(tests/evaluation/test_generate.py), the gathered predictions equal a 1-rank run's.
"""
from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """(rank, world size); joins the process group the launcher prepared when there are several ranks."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for_rank(device: str | None, world_size: int) -> str | None:
    """Each rank on its own GPU; an explicit --device is kept."""
    if device or world_size == 1:
        return device
    import torch

    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


def shard(items: list, rank: int, world_size: int) -> list:
    return items[rank::world_size]


def gather(local: list, rank: int, world_size: int) -> list:
    """The shards of every rank put back in the original order (on every rank)."""
    if world_size == 1:
        return list(local)
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, local)
    return interleave(parts)


def interleave(parts: list[list]) -> list:
    """The inverse of ``shard``: ``parts[r]`` holds items r, r + world, …"""
    world_size, total = len(parts), sum(len(p) for p in parts)
    return [parts[i % world_size][i // world_size] for i in range(total)]
