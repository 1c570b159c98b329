"""Batching: pad tokenised rows into tensors. Preference pairs become one (2B, T) batch, chosen first;
unpaired (KTO) rows a (B, T) batch; ``kl_rows`` builds the mismatched prompt/completion rows of KTO's KL
estimate from an optimizer step's rows, which the loop collates like any unpaired rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch

from alignkit.data.packing import unpacked
from alignkit.data.template import IGNORE_INDEX, Encoded


class EncodedPair(NamedTuple):
    """A tokenised preference row; ``margin`` is the row's optional reward-model margin."""

    chosen: Encoded
    rejected: Encoded
    margin: float | None = None


class EncodedUnpaired(NamedTuple):
    """A tokenised KTO row: prompt + completion, and whether the completion is desirable."""

    sequence: Encoded
    desirable: bool


class EncodedLabelled(NamedTuple):
    """A tokenised seq_cls row: the conversation and its label (class index, indices or number(s))."""

    sequence: Encoded
    label: int | float | list


@dataclass
class Batch:
    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    labels: torch.Tensor  # (N, T), -100 where no loss is taken
    row_ids: list[int]  # dataset row index of each example (each pair, for preference batches)
    margins: torch.Tensor | None = None  # (B,) per-pair reward margins, when the data has them
    # Extra model inputs, passed to every forward as keywords: a vision-language model's pixel_values etc.
    model_inputs: dict[str, torch.Tensor] | None = None
    loss_scale: torch.Tensor | None = None  # (N, T) per-token loss weights (--loss_scale hermes, ...), None: all 1

    def to(self, device) -> Batch:
        margins = None if self.margins is None else self.margins.to(device)
        extra = None if self.model_inputs is None else {k: v.to(device) for k, v in self.model_inputs.items()}
        scale = None if self.loss_scale is None else self.loss_scale.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.row_ids,
                     margins, extra, scale)


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


def pad_loss_scale(sequences: list[Encoded], length: int) -> torch.Tensor | None:
    """(N, T) per-token weights when any sequence has them: a sequence without weighs each trained token 1;
    padding and untrained tokens weigh 0. None when no sequence has weights."""
    if all(s.loss_scale is None for s in sequences):
        return None
    scale = torch.zeros((len(sequences), length))  # (N, T)
    for i, s in enumerate(sequences):
        weights = s.loss_scale if s.loss_scale is not None else [float(t != IGNORE_INDEX) for t in s.labels]
        scale[i, : len(weights)] = torch.tensor(weights)
    return scale


class PaddedTo:
    """``collate``'s batches right-padded to ``length`` tokens: ms-swift's ``padding_to`` (the template's max_length),
    which it sets for LongLoRA, whose attention groups are a fixed fraction of the row.

    >>> PaddedTo(SequenceCollator(0), 4, 0)([(0, Encoded([7, 8], [-100, 8]))]).input_ids
    tensor([[7, 8, 0, 0]])
    """

    def __init__(self, collate, length: int, pad_id: int):
        self.collate, self.length, self.pad_id = collate, length, pad_id

    def __call__(self, items) -> Batch:
        batch = self.collate(items)
        extra = self.length - batch.input_ids.shape[1]
        if extra <= 0:
            return batch
        pad_right = (0, extra)
        return dataclasses.replace(
            batch, input_ids=torch.nn.functional.pad(batch.input_ids, pad_right, value=self.pad_id),  # (N, length)
            attention_mask=torch.nn.functional.pad(batch.attention_mask, pad_right, value=0),
            labels=torch.nn.functional.pad(batch.labels, pad_right, value=IGNORE_INDEX),
            loss_scale=None if batch.loss_scale is None else torch.nn.functional.pad(batch.loss_scale, pad_right))


class SequenceCollator:
    """SFT rows: list of (row_id, Encoded) → Batch of N sequences. A pack (``--packing``) adds all its rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, Encoded]]) -> Batch:
        items = unpacked(items)
        sequences = [e for _, e in items]
        input_ids, attention_mask, labels = pad(sequences, self.pad_id)
        return Batch(input_ids, attention_mask, labels, row_ids=[i for i, _ in items],
                     loss_scale=pad_loss_scale(sequences, input_ids.shape[1]))


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
    desirable: torch.Tensor  # (B,) bool
    row_ids: list[int]

    def to(self, device) -> UnpairedBatch:
        return UnpairedBatch(self.completions.to(device), self.desirable.to(device), self.row_ids)


def split_prompt(encoded: Encoded) -> tuple[Encoded, Encoded]:
    """Cut a sequence before its first trained token: (prompt with the assistant header, completion)."""
    start = next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), len(encoded.labels))
    return (Encoded(encoded.input_ids[:start], encoded.labels[:start]),
            Encoded(encoded.input_ids[start:], encoded.labels[start:]))


def kl_rows(items: list[tuple[int, EncodedUnpaired]]) -> list[tuple[int, EncodedUnpaired]]:
    """The mismatched rows of KTO's KL estimate, one per row of ``items`` and in its order: row j's prompt with
    row j−1's completion, the first row's prompt taking the last row's completion, as TRL and ms-swift shift
    them: (x_1, y_n), (x_2, y_1), ..., (x_n, y_(n-1)). Each keeps row j's id and label and, for a vision row,
    prompt j's images (they live in the prompt). The tokens are spliced, which equals rendering the mismatched
    conversation because the chat encoder checked that a prompt's tokens are a prefix of the whole."""
    parts = [split_prompt(row.sequence) for _, row in items]
    out = []
    for (row_id, row), (prompt, _), (_, completion) in zip(items, parts, parts[-1:] + parts[:-1]):
        spliced = dataclasses.replace(row.sequence, input_ids=prompt.input_ids + completion.input_ids,
                                      labels=prompt.labels + completion.labels)
        out.append((row_id, EncodedUnpaired(spliced, row.desirable)))
    return out


class UnpairedCollator:
    """KTO rows (or their mismatched KL rows): list of (row_id, EncodedUnpaired) → UnpairedBatch."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[int, EncodedUnpaired]]) -> UnpairedBatch:
        row_ids = [i for i, _ in items]
        desirable = torch.tensor([row.desirable for _, row in items], dtype=torch.bool)  # (B,)
        completions = Batch(*pad([row.sequence for _, row in items], self.pad_id), row_ids=row_ids)
        return UnpairedBatch(completions, desirable, row_ids)


@dataclass
class ClassifiedBatch:
    sequences: Batch  # (B, T)
    targets: torch.Tensor  # (B,) long class indices, (B, L) float multi-hot, or (B,) / (B, L) float regression
    row_ids: list[int]

    def to(self, device) -> ClassifiedBatch:
        return ClassifiedBatch(self.sequences.to(device), self.targets.to(device), self.row_ids)


class ClassificationCollator:
    """seq_cls rows: list of (row_id, EncodedLabelled) → ClassifiedBatch, targets shaped as ms-swift's seq_cls
    collator makes them for transformers' losses: class indices (single-label), multi-hot rows (multi-label, from
    each row's class indices), floats (regression)."""

    def __init__(self, pad_id: int, *, problem_type: str, num_labels: int):
        self.pad_id, self.problem_type, self.num_labels = pad_id, problem_type, num_labels

    def __call__(self, items: list[tuple[int, EncodedLabelled]]) -> ClassifiedBatch:
        labels = [row.label for _, row in items]
        if self.problem_type == "single_label_classification":
            targets = torch.tensor([int(label) for label in labels], dtype=torch.long)  # (B,)
        elif self.problem_type == "multi_label_classification":
            targets = torch.zeros(len(labels), self.num_labels)  # (B, L)
            for i, label in enumerate(labels):
                targets[i, [int(c) for c in (label if isinstance(label, list) else [label])]] = 1.0
        else:
            targets = torch.tensor(labels, dtype=torch.float32)  # (B,) or (B, L)
        row_ids = [i for i, _ in items]
        return ClassifiedBatch(Batch(*pad([row.sequence for _, row in items], self.pad_id), row_ids=row_ids),
                               targets, row_ids)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7]] → ids [[5, 6], [pad, 7]], mask [[1, 1], [0, 1]]."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (N, P)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, P)
    for i, s in enumerate(sequences):
        ids[i, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, length - len(s) :] = 1
    return ids, mask
