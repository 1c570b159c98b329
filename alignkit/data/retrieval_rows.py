"""ms-swift's embedding and reranker rows (docs/source_en/BestPractices/Embedding.md, Reranker.md) → ``GroupRow``.

A record holds the anchor or query in ``messages``, a list of conversations in ``positive_messages`` and,
optionally, in ``negative_messages``, and for the pair losses a ``label``::

    {"messages": [{"role": "user", "content": "q"}],
     "positive_messages": [[{"role": "assistant", "content": "d+"}]],
     "negative_messages": [[{"role": "assistant", "content": "d-"}]]}

- embedding (``"embedding"``): sequences [q], [d+], [d-]; labels [1.0, 0.0] — one label for the anchor/positive
  pair (the record's ``label``, 1.0 when absent) and 0.0 per negative, as ms-swift's ``_embedding_encode``; only
  the first positive is used (ms-swift's rule: exactly one positive).
- reranker (``"ranking"``): sequences [q + d+], [q + d-]; labels [1, 0]. A document's own system message wins
  over the query's (ms-swift's instruction priority).
"""

from __future__ import annotations

from typing import Any

from alignkit.data import fields as f
from alignkit.data.rows import GroupRow, Message, RowSource

GROUP_KINDS = ("embedding", "ranking")
COLUMNS = ("messages", "positive_messages")


def _conversations(record: dict[str, Any], name: str, source: RowSource) -> list[list[Message]]:
    value = record.get(name)
    if f.missing(value):
        return []
    if not isinstance(value, list) or not all(isinstance(item, list) for item in value):
        raise f.error(source, name, "expected a list of conversations (a list of lists of messages)")
    return [f.messages(item, f"{name}[{i}]", source) for i, item in enumerate(value)]


def _split_system(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[:1], messages[1:]
    return [], messages


def parse_group(record: dict[str, Any], kind: str, source: RowSource) -> GroupRow:
    """One record → its GroupRow for ``kind`` ("embedding" or "ranking")."""
    written = f.messages(f.required(record, "messages", source, "a non-empty list of messages"), "messages", source)
    anchor = f.system_turn(record, written, source) + written
    positives = _conversations(record, "positive_messages", source)
    negatives = _conversations(record, "negative_messages", source)
    if not positives:
        raise f.error(source, "positive_messages", "expected at least one positive conversation")
    used = {"messages", "system", "positive_messages", "negative_messages", "label"}
    extras = f.extras(record, used)
    if kind == "embedding":
        label = record.get("label")
        if f.missing(label):
            label = 1.0
        elif isinstance(label, bool) or not isinstance(label, (int, float)):
            raise f.error(source, "label", f"expected a number (the pair's similarity or 0/1), got {label!r}")
        return GroupRow([anchor, positives[0], *negatives], [float(label)] + [0.0] * len(negatives), source, extras)
    query_system, query = _split_system(anchor)

    def joined(document: list[Message]) -> list[Message]:
        own_system, body = _split_system(document)
        return (own_system or query_system) + query + body

    sequences = [joined(d) for d in positives] + [joined(d) for d in negatives]
    return GroupRow(sequences, [1.0] * len(positives) + [0.0] * len(negatives), source, extras)
