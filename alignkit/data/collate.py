"""Batching: pad tokenised rows into tensors. Preference pairs become one (2B, T) batch, chosen first."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.template import IGNORE_INDEX, Encoded


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    labels: torch.Tensor  # (N, T), -100 where no loss is taken
    row_ids: list[int]  # dataset row index of each example (each pair, for preference batches)

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.row_ids)


def pad(sequences: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: ids with pad_id, labels with -100, mask 0 on padding."""
    length = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (N, T)
    labels = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, T)
    for i, s in enumerate(sequences):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        attention_mask[i, :n] = 1
    return input_ids, attention_mask, labels


class SequenceCollator:
    """SFT rows: list of (row_id, Encoded) → Batch of N sequences."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, Encoded]]) -> Batch:
        return Batch(*pad([e for _, e in items], self.pad_id), row_ids=[i for i, _ in items])


class PairCollator:
    """Preference rows: list of (row_id, (chosen, rejected)) → Batch of 2B sequences, chosen[0:B], rejected[B:2B].

    One concatenated forward over both halves is cheaper than two and keeps padding identical.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, tuple[Encoded, Encoded]]]) -> Batch:
        chosen = [pair[0] for _, pair in items]
        rejected = [pair[1] for _, pair in items]
        return Batch(*pad(chosen + rejected, self.pad_id), row_ids=[i for i, _ in items])
