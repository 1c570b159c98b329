"""Data that arrives tokenised: ColossalChat's ``prepare_dataset.py`` layout, read from its token ids.

ColossalChat writes each part twice, ``jsonl/part-00000.jsonl`` and ``arrow/part-00000/`` (datasets'
save_to_disk), with these columns (the ``*_decode`` columns are text for reading, never trained)::

    sft         input_ids, labels (-100 where no loss)     inputs_decode, labels_decode, seq_length, seq_category
    preference  chosen_input_ids, chosen_loss_mask (1 = trained token), rejected_input_ids, rejected_loss_mask,
                chosen_label_decode, rejected_label_decode
    kto         prompt (ids, with the assistant header), completion (ids), label, input_id_decode, completion_decode
    prompt      input_ids, inputs_decode, seq_length, seq_category (+ gt_answer): PPO prompts, scored as ids

Such a row becomes a ``TokenizedRow``: its ids and masks are trained exactly as stored (no chat template,
--system or --loss_scale touches them); only --max_length and --truncation_strategy apply. Example::

    {"chosen_input_ids": [1, 5, 9], "chosen_loss_mask": [0, 0, 1], "rejected_input_ids": [1, 5, 7],
     "rejected_loss_mask": [0, 0, 1], ...}
    -> TokenizedRow("preference", [([1, 5, 9], [-100, -100, 9]), ([1, 5, 7], [-100, -100, 7])])
"""

from __future__ import annotations

from typing import Any

from alignkit.data import fields as f
from alignkit.data.rows import RowSource, TokenizedRow
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded

SFT_COLUMNS = ("input_ids", "labels")
PREFERENCE_COLUMNS = ("chosen_input_ids", "chosen_loss_mask", "rejected_input_ids", "rejected_loss_mask")
KTO_COLUMNS = ("prompt", "completion", "label")
PROMPT_COLUMNS = ("input_ids", "inputs_decode")


def _ids(record: dict[str, Any], column: str, source: RowSource) -> list[int]:
    value = record[column]
    if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise f.error(source, column, "expected a list of token ids")
    if not value:
        raise f.error(source, column, "no tokens")
    return list(value)


def _same_length(a: list, b: list, names: tuple[str, str], source: RowSource) -> None:
    if len(a) != len(b):
        raise f.error(source, names[1], f"{len(b)} values for the {len(a)} tokens of {names[0]}")


def sft_row(record: dict[str, Any], source: RowSource) -> TokenizedRow:
    ids, labels = _ids(record, "input_ids", source), _ids(record, "labels", source)
    _same_length(ids, labels, ("input_ids", "labels"), source)
    if all(label == IGNORE_INDEX for label in labels):
        raise f.error(source, "labels", "every label is -100: the row trains nothing")
    return TokenizedRow("sft", [(ids, labels)], source=source)


def preference_row(record: dict[str, Any], source: RowSource) -> TokenizedRow:
    sequences = []
    for side in ("chosen", "rejected"):
        ids, mask = _ids(record, f"{side}_input_ids", source), _ids(record, f"{side}_loss_mask", source)
        _same_length(ids, mask, (f"{side}_input_ids", f"{side}_loss_mask"), source)
        if not any(mask):
            raise f.error(source, f"{side}_loss_mask", "no token is trained (the mask is all 0)")
        sequences.append((ids, [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]))
    return TokenizedRow("preference", sequences, source=source)


def kto_row(record: dict[str, Any], source: RowSource) -> TokenizedRow:
    prompt, completion = _ids(record, "prompt", source), _ids(record, "completion", source)
    label = record["label"]
    if not isinstance(label, bool):
        raise f.error(source, "label", f"expected true or false, got {label!r}")
    labels = [IGNORE_INDEX] * len(prompt) + completion
    return TokenizedRow("unpaired", [(prompt + completion, labels)], label=label, source=source)


def prompt_row(record: dict[str, Any], source: RowSource) -> TokenizedRow:
    """A PPO prompt as ids (ending in the assistant header): sampled from as stored, and scored as ids by a reward
    model that shares the policy's vocabulary, as ColossalChat does."""
    ids = _ids(record, "input_ids", source)
    extras = {"gt_answer": record["gt_answer"]} if record.get("gt_answer") is not None else {}
    return TokenizedRow("prompt", [(ids, [IGNORE_INDEX] * len(ids))], source=source, extras=extras)


def holds_token_ids(column: str):
    """A sniff: ``column`` of the sample record is a list of token ids (ColossalChat's prepared KTO rows share
    their column names with the raw ones, which hold messages)."""

    def sniff(record: dict[str, Any]) -> bool:
        value = record.get(column)
        return isinstance(value, list) and bool(value) and all(isinstance(x, int) for x in value)

    return sniff


def encode_tokenized(encoder: ChatEncoder, row: TokenizedRow) -> Encoded | tuple[Encoded, Encoded]:
    """The stored sequences, fitted to --max_length (by --truncation_strategy, as every row is)."""
    encoded = [encoder.fit(Encoded(list(ids), list(labels)), row.source) for ids, labels in row.sequences]
    return (encoded[0], encoded[1]) if row.kind == "preference" else encoded[0]
