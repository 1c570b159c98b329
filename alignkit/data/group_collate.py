"""Batching of embedding and reranker rows (``GroupRow``): every row's conversations become rows of one padded
(N, T) batch, in ms-swift's order, with one label per conversation.

- embedding: [anchor, positive, negatives...] per row, labels [label, 0.0, ...] (ms-swift's
  ``_embedding_data_collator``);
- reranker (``sample``): per row, up to MAX_POSITIVE_SAMPLES positives (default 1), each followed by up to
  MAX_NEGATIVE_SAMPLES negatives (default 7), drawn without replacement as ms-swift's ``_reranker_data_collator``;
  the draw is seeded by the row's index, so a resumed run draws the same groups.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import NamedTuple

import torch

from alignkit.data.collate import Batch, pad
from alignkit.data.packing import unpacked
from alignkit.data.template import Encoded


class EncodedGroup(NamedTuple):
    sequences: tuple[Encoded, ...]
    labels: tuple[float, ...]


@dataclass
class GroupBatch:
    sequences: Batch  # (N, T): every row's conversations, one after another
    labels: torch.Tensor  # (N,) float: one label per conversation
    row_ids: list[int]

    def to(self, device) -> GroupBatch:
        return GroupBatch(self.sequences.to(device), self.labels.to(device), self.row_ids)


def sampled_groups(row_id: int, group: EncodedGroup, max_positive: int, max_negative: int) -> list[int]:
    """Indices into ``group`` for one reranker row: each drawn positive followed by its drawn negatives."""
    positives = [i for i, label in enumerate(group.labels) if label == 1]
    negatives = [i for i, label in enumerate(group.labels) if label != 1]
    rng = random.Random(row_id)
    chosen = []
    for p in rng.sample(positives, min(len(positives), max_positive)):
        chosen += [p, *rng.sample(negatives, min(len(negatives), max_negative))]
    return chosen


class GroupCollator:
    """list of (row_id, EncodedGroup) → GroupBatch; ``sample`` draws reranker groups (module docstring). A
    ``Pack`` item (--packing) stands for its rows."""

    def __init__(self, pad_id: int, *, sample: bool):
        self.pad_id, self.sample = pad_id, sample
        self.max_positive = int(os.environ.get("MAX_POSITIVE_SAMPLES", 1))
        self.max_negative = int(os.environ.get("MAX_NEGATIVE_SAMPLES", 7))

    def __call__(self, items: list[tuple[int, EncodedGroup]]) -> GroupBatch:
        items = unpacked(items)  # a pack (--packing) adds all its rows, each drawn as its own row
        sequences, labels = [], []
        for row_id, group in items:
            order = (sampled_groups(row_id, group, self.max_positive, self.max_negative) if self.sample
                     else range(len(group.sequences)))
            sequences += [group.sequences[i] for i in order]
            labels += [group.labels[i] for i in order] if self.sample else list(group.labels)
        row_ids = [i for i, _ in items]
        return GroupBatch(Batch(*pad(sequences, self.pad_id), row_ids=row_ids),
                          torch.tensor(labels, dtype=torch.float32), row_ids)
