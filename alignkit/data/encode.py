"""Canonical rows → token ids and labels, in one process or several (``--dataset_num_proc``).

Example::

    items, dropped = encode_rows(encoder, [pair_row, too_long_row])
    # items   == [(0, (chosen Encoded, rejected Encoded))]   row index and its sequences
    # dropped == 1                                          did not fit --max_length (strategy delete)
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from alignkit.data.collate import EncodedLabelled, EncodedPair, EncodedUnpaired
from alignkit.data.group_collate import EncodedGroup
from alignkit.data.prepared import encode_tokenized
from alignkit.data.rows import (
    ClassificationRow,
    ConversationRow,
    GroupRow,
    PreferenceRow,
    PromptRow,
    Row,
    TokenizedRow,
    UnpairedRow,
)
from alignkit.data.template import ChatEncoder, Encoded, Truncated
from alignkit.errors import AlignkitError

Item = tuple[int, "Encoded | tuple[Encoded, Encoded]"]
"""A row's index in the dataset and its sequences: one, or (chosen, rejected) for a pair."""


def encode_row(encoder: ChatEncoder, row: Row) -> Encoded | tuple[Encoded, Encoded]:
    if isinstance(row, PreferenceRow):
        return encoder.encode_pair(row)
    if isinstance(row, ConversationRow):
        return encoder.encode_conversation(row)
    if isinstance(row, UnpairedRow):
        return encoder.encode_unpaired(row)
    if isinstance(row, PromptRow):
        return encoder.encode_prompt_row(row)
    if isinstance(row, ClassificationRow):
        return encoder.encode_classified(row)
    if isinstance(row, TokenizedRow):
        return encode_tokenized(encoder, row)
    if isinstance(row, GroupRow):  # each conversation whole, as a seq_cls row (none of its tokens trained)
        return tuple(encoder.encode_classified(ClassificationRow(m, 0.0, row.source)) for m in row.sequences)
    raise AlignkitError(f"cannot encode rows of type {type(row).__name__}")


def _encode_chunk(encoder: ChatEncoder, rows: list[Row], offset: int) -> tuple[list[Item], int]:
    items, dropped = [], 0
    for i, row in enumerate(rows):
        try:
            items.append((offset + i, encode_row(encoder, row)))
        except Truncated:
            dropped += 1
    return items, dropped


def encode_rows(encoder: ChatEncoder, rows: list[Row], *, num_proc: int = 1) -> tuple[list[Item], int]:
    """Encode every row, dropping (and counting) those that do not fit ``--max_length``.

    With ``num_proc > 1`` the rows are cut into ``num_proc`` contiguous chunks encoded in worker processes;
    the result is the same as in one process, in the same order.
    """
    if num_proc <= 1 or len(rows) < 2 * num_proc:
        return _encode_chunk(encoder, rows, 0)
    size = -(-len(rows) // num_proc)
    starts = range(0, len(rows), size)
    # fork shares the tokenizer with the workers without pickling it where the platform has it.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(_encode_chunk, encoder, rows[start : start + size], start) for start in starts]
        results = [future.result() for future in futures]
    return [item for items, _ in results for item in items], sum(dropped for _, dropped in results)


def with_row_fields(items: list, rows: list) -> list:
    """Attach what the losses need besides tokens: a pair's RM margin, a KTO row's label, a seq_cls row's label."""
    out = []
    for index, encoded in items:
        row = rows[index]
        if isinstance(row, PreferenceRow):
            encoded = EncodedPair(encoded[0], encoded[1], margin=row.margin)
        elif isinstance(row, TokenizedRow) and row.kind != "sft":
            encoded = EncodedPair(*encoded) if row.kind == "preference" else EncodedUnpaired(encoded, row.label)
        elif isinstance(row, UnpairedRow):
            encoded = EncodedUnpaired(encoded, row.label)
        elif isinstance(row, ClassificationRow):
            encoded = EncodedLabelled(encoded, row.label)
        elif isinstance(row, GroupRow):
            encoded = EncodedGroup(tuple(encoded), tuple(row.labels))
        out.append((index, encoded))
    return out
