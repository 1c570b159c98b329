"""The canonical rows every dataset format is converted into.

Messages are plain dicts ``{"role": "system"|"user"|"assistant", "content": str}`` so they can be fed
straight to a tokenizer's chat template. An SFT conversation may also hold ms-swift's agent roles ``tool_call``
and ``tool`` and a ``tools`` list, which ``--agent_template`` renders into plain turns (``data.agent_templates``).

Example (a preference pair)::

    PreferenceRow(
        prompt=[{"role": "user", "content": "What is 2+3?"}],
        chosen=[{"role": "assistant", "content": "5"}],
        rejected=[{"role": "assistant", "content": "6"}],
    )
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass(frozen=True)
class RowSource:
    """Where a row came from, so errors can name it: a file (or built-in set name) and a 1-based row number."""

    file: str
    row: int


@dataclass
class ConversationRow:
    """SFT: a whole conversation; assistant turns are trained. ``tools``: the row's tool definitions (agent rows)."""

    messages: list[Message]
    source: RowSource | None = None
    tools: list[dict] | None = None


@dataclass
class PreferenceRow:
    """DPO/CPO/ORPO/SimPO/RM: a prompt (conversation ending in a user turn) and two answers."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None
    source: RowSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnpairedRow:
    """KTO: a prompt, one answer and whether it is desirable."""

    prompt: list[Message]
    completion: list[Message]
    label: bool
    source: RowSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassificationRow:
    """seq_cls: a conversation, classified as a whole, and its label: a class index (single-label), a list of
    class indices (multi-label), or a number or list of numbers (regression)."""

    messages: list[Message]
    label: int | float | list
    source: RowSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroupRow:
    """Embedding and reranker training (--task_type embedding | reranker | generative_reranker): conversations
    encoded one by one, each with a label, as ms-swift lays them out. Embedding: anchor, positive, negatives,
    labels [the row's label (1.0 unset), 0.0, ...]; reranker: query + document for each positive (label 1), then
    each negative (label 0)."""

    sequences: list[list[Message]]
    labels: list[float]
    source: RowSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptRow:
    """Online methods (PPO/GRPO) and evaluation: a prompt only, plus columns for reward functions."""

    prompt: list[Message]
    extras: dict[str, Any] = field(default_factory=dict)
    source: RowSource | None = None


@dataclass
class TokenizedRow:
    """A row that arrives tokenised (ColossalChat's prepare_dataset output, alignkit/data/prepared.py): its ids
    and labels are trained as they are, never re-rendered. ``sequences`` holds (input_ids, labels) pairs, labels
    -100 where no loss is taken: one for sft and unpaired (KTO, judged by ``label``) rows, chosen and rejected
    for preference rows."""

    kind: str  # sft | preference | unpaired | prompt
    sequences: list[tuple[list[int], list[int]]]
    label: bool | None = None
    source: RowSource | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Row = ConversationRow | PreferenceRow | UnpairedRow | PromptRow | ClassificationRow | GroupRow | TokenizedRow
