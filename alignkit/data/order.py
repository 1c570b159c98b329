"""The order in which training rows are visited: micro-batches of row indices per epoch, and how many
optimizer steps a run has. Pure functions of (rows, batch size, seed, epoch), so that a resumed run and the
reference pass rebuild exactly the loop's order."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.data.template import Encoded


def epoch_batches(num_rows: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool, drop_last: bool = False,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch. The order depends only on (seed, epoch), so a resumed
    run can rebuild it exactly and skip what was already seen.

    ``drop_last`` (``--dataloader_drop_last``): the epoch's last micro-batch is dropped when it is short.
    ``lengths`` (``--group_by_length``): the epoch's shuffled order is regrouped by row length, as
    transformers' ``get_length_grouped_indices`` (see ``length_grouped_order``)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    if lengths is not None:
        order = length_grouped_order(lengths, batch_size, generator)
    elif shuffle:
        order = torch.randperm(num_rows, generator=generator).tolist()
    else:
        order = list(range(num_rows))
    batches = [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def batches_per_epoch(num_rows: int, batch_size: int, *, drop_last: bool = False) -> int:
    return num_rows // batch_size if drop_last else math.ceil(num_rows / batch_size)


def length_grouped_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """transformers' length-grouped order (``trainer_pt_utils.get_length_grouped_indices``, which ms-swift's
    ``--group_by_length`` calls with the global micro-batch): a random permutation cut into mega-batches of
    ``min(rows // (4 × batch_size), 50)`` micro-batches (at least 1), each sorted by length, longest first,
    and the longest row of all moved to the very first position (an out-of-memory shows at once).

    >>> length_grouped_order([1, 9, 3, 7], 1, torch.Generator().manual_seed(0))[0]
    1
    """
    mega_batch_mult = min(len(lengths) // (batch_size * 4), 50) or 1
    indices = torch.randperm(len(lengths), generator=generator)
    size = mega_batch_mult * batch_size
    megabatches = [sorted(indices[i : i + size].tolist(), key=lambda i: lengths[i], reverse=True)
                   for i in range(0, len(lengths), size)]
    longest = int(torch.argmax(torch.tensor([lengths[m[0]] for m in megabatches])).item())
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for megabatch in megabatches for i in megabatch]


def encoded_length(item) -> int:
    """Tokens of one encoded row, for ``--group_by_length``: a sequence's length, a pair's longer side (as
    ms-swift takes the max of a row's lengths), a prompt's token ids; a (row_id, encoded) tuple counts its
    encoded part."""
    if isinstance(item, Encoded):
        return len(item.input_ids)
    if isinstance(item, list):
        return len(item)
    if isinstance(item, tuple):
        return max((encoded_length(part) for part in item if isinstance(part, (Encoded, tuple, list))), default=0)
    raise TypeError(f"cannot measure the length of {type(item).__name__}")


def total_steps(num_batches: int, config) -> int:
    """Optimizer steps of a run: ``config.max_steps``, else epochs × ceil(micro-batches / accumulation)."""
    if config.max_steps > 0:
        return config.max_steps
    steps_per_epoch = math.ceil(num_batches / config.gradient_accumulation_steps)
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch))


@dataclass(frozen=True)
class DataOrder:
    """How one run visits its rows: global micro-batches (``batch_size`` rows over all processes) per epoch,
    from the run's seed, shuffle, ``--dataloader_drop_last`` and ``--group_by_length`` (row ``lengths``)."""

    num_rows: int
    batch_size: int
    seed: int
    shuffle: bool = True
    drop_last: bool = False
    lengths: tuple[int, ...] | None = None

    @classmethod
    def for_rows(cls, rows: list, batch_size: int, config) -> DataOrder:
        """The order of ``rows`` (encoded rows or (row_id, encoded) tuples) under a LoopConfig."""
        lengths = tuple(encoded_length(row) for row in rows) if config.group_by_length else None
        return cls(len(rows), batch_size, config.seed, config.shuffle, config.drop_last, lengths)

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.num_rows, self.batch_size, drop_last=self.drop_last)

    def epoch(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.num_rows, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                             drop_last=self.drop_last, lengths=self.lengths)
