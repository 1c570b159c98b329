"""The order in which training rows are visited: micro-batches of row indices per epoch, and how many
optimizer steps a run has. Pure functions of (rows, batch size, seed, epoch), so that a resumed run and the
reference pass rebuild exactly the loop's order."""

from __future__ import annotations

import math

import torch


def epoch_batches(num_rows: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch. The order depends only on (seed, epoch), so a resumed
    run can rebuild it exactly and skip what was already seen."""
    if shuffle:
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(num_rows))
    return [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]


def total_steps(num_batches: int, config) -> int:
    """Optimizer steps of a run: ``config.max_steps``, else epochs × ceil(micro-batches / accumulation)."""
    if config.max_steps > 0:
        return config.max_steps
    steps_per_epoch = math.ceil(num_batches / config.gradient_accumulation_steps)
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
