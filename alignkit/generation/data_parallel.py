"""Data-parallel batch inference (ms-swift's `NPROC_PER_NODE=N swift infer --val_dataset ...`): each process
answers one contiguous share of the prompts, and the answers are gathered in dataset order for rank 0 to write.

Contiguous shares keep each chunk of --max_batch_size the same rows as one process would batch whenever a share's
length is a multiple of it, so greedy answers match a single process's."""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def start() -> None:
    """Join the processes torchrun started (nccl on GPUs, one per process; gloo on CPU)."""
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def share(count: int) -> range:
    """This process's contiguous share of ``count`` rows (the first ``count % world`` shares one row longer)."""
    size, extra = divmod(count, world_size())
    first = rank() * size + min(rank(), extra)
    return range(first, first + size + (rank() < extra))


def gather(items: list) -> list:
    """Every process's ``items``, concatenated in rank order (so in dataset order for contiguous shares)."""
    import torch.distributed as dist

    parts: list = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]
