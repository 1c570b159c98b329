"""Batching: pad tokenised rows into tensors. Preference pairs become one (2B, T) batch, chosen first;
unpaired (KTO) rows a (B, T) batch plus the mismatched prompt/completion batch of the KL estimate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from alignkit.data.packing import unpacked
from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.errors import AlignkitError


class EncodedPair(NamedTuple):
    """A tokenised preference row; ``margin`` is the row's optional reward-model margin."""

    chosen: Encoded
    rejected: Encoded
    margin: float | None = None


class EncodedUnpaired(NamedTuple):
    """A tokenised KTO row: prompt + completion, and whether the completion is desirable."""

    sequence: Encoded
    desirable: bool


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    labels: torch.Tensor  # (N, T), -100 where no loss is taken
    row_ids: list[int]  # dataset row index of each example (each pair, for preference batches)
    margins: torch.Tensor | None = None  # (B,) per-pair reward margins, when the data has them
    # Extra model inputs, passed to every forward as keywords: a vision-language model's pixel_values etc.
    model_inputs: dict[str, torch.Tensor] | None = None

    def to(self, device) -> Batch:
        margins = None if self.margins is None else self.margins.to(device)
        extra = None if self.model_inputs is None else {k: v.to(device) for k, v in self.model_inputs.items()}
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.row_ids,
                     margins, extra)


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
    """SFT rows: list of (row_id, Encoded) → Batch of N sequences. A pack (``--packing``) adds all its rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, Encoded]]) -> Batch:
        items = unpacked(items)
        return Batch(*pad([e for _, e in items], self.pad_id), row_ids=[i for i, _ in items])


class PairCollator:
    """Preference rows: list of (row_id, (chosen, rejected)) → Batch of 2B sequences, chosen[0:B], rejected[B:2B].

    One concatenated forward over both halves is cheaper than two and keeps padding identical. A pack
    (``--packing``) adds all its pairs.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, EncodedPair | tuple[Encoded, Encoded]]]) -> Batch:
        items = unpacked(items)
        chosen = [pair[0] for _, pair in items]
        rejected = [pair[1] for _, pair in items]
        margins = [pair.margin if isinstance(pair, EncodedPair) else None for _, pair in items]
        # A pair without a margin in data that has some gets margin 0, i.e. the plain Bradley–Terry loss.
        margin_tensor = None
        if any(m is not None for m in margins):
            margin_tensor = torch.tensor([0.0 if m is None else m for m in margins])  # (B,)
        return Batch(*pad(chosen + rejected, self.pad_id), row_ids=[i for i, _ in items], margins=margin_tensor)


@dataclass
class UnpairedBatch:
    completions: Batch  # (B, T) prompt_i + completion_i
    kl: Batch | None  # (B, T') prompt_i + completion_(i-1): the mismatched pairs of KTO's KL estimate
    desirable: torch.Tensor  # (B,) bool
    row_ids: list[int]

    def to(self, device) -> UnpairedBatch:
        kl = None if self.kl is None else self.kl.to(device)
        return UnpairedBatch(self.completions.to(device), kl, self.desirable.to(device), self.row_ids)


def split_prompt(encoded: Encoded) -> tuple[Encoded, Encoded]:
    """Cut a sequence before its first trained token: (prompt with the assistant header, completion)."""
    start = next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), len(encoded.labels))
    return (Encoded(encoded.input_ids[:start], encoded.labels[:start]),
            Encoded(encoded.input_ids[start:], encoded.labels[start:]))


def mismatched_pairs(sequences: list[Encoded]) -> list[Encoded]:
    """Prompt i with completion i−1, the last completion going to the first prompt, as TRL's KTO builds its
    KL pairs: (x_1, y_n), (x_2, y_1), ..., (x_n, y_(n-1)). The tokens are spliced, which equals rendering
    the mismatched conversation because the chat encoder checked that a prompt's tokens are a prefix."""
    parts = [split_prompt(s) for s in sequences]
    return [
        Encoded(prompt.input_ids + completion.input_ids, prompt.labels + completion.labels)
        for (prompt, _), (_, completion) in zip(parts, parts[-1:] + parts[:-1])
    ]


class UnpairedCollator:
    """KTO rows: list of (row_id, EncodedUnpaired) → UnpairedBatch; with ``kl_pairs`` also the mismatched batch."""

    def __init__(self, pad_id: int, *, kl_pairs: bool):
        self.pad_id = pad_id
        self.kl_pairs = kl_pairs

    def __call__(self, items: list[tuple[int, EncodedUnpaired]]) -> UnpairedBatch:
        sequences = [row.sequence for _, row in items]
        row_ids = [i for i, _ in items]
        kl = None
        if self.kl_pairs:
            if len(items) < 2:
                raise AlignkitError(
                    "KTO estimates its KL term from mismatched prompt/completion pairs within a micro-batch, so a "
                    f"micro-batch needs at least 2 rows; got {len(items)}. Raise --per_device_train_batch_size "
                    "(and --per_device_eval_batch_size), or use --loss_type apo_zero_unpaired, which has no KL term."
                )
            kl = Batch(*pad(mismatched_pairs(sequences), self.pad_id), row_ids=row_ids)
        desirable = torch.tensor([row.desirable for _, row in items], dtype=torch.bool)  # (B,)
        return UnpairedBatch(Batch(*pad(sequences, self.pad_id), row_ids=row_ids), kl, desirable, row_ids)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7]] → ids [[5, 6], [pad, 7]], mask [[1, 1], [0, 1]]."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (N, P)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, P)
    for i, s in enumerate(sequences):
        ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask
