"""Reranker training (ms-swift's ``sft --task_type reranker | generative_reranker``): one relevance score per
query-document sequence, trained by --loss_type pointwise_reranker (binary cross-entropy) or listwise_reranker
(cross-entropy within each positive's group), ``alignkit.losses.retrieval``.

- reranker: a sequence-classification model with one label scores the last non-padding token (ms-swift loads
  the causal LM as AutoModelForSequenceClassification, num_labels 1). Without --loss_type, the model's own
  loss, as ms-swift falls back to it: transformers' one-label loss, mean squared error against 0/1.
- generative_reranker: the causal LM's own head, read at the last non-padding token: score = logit("yes") −
  logit("no") (ms-swift's ``get_generative_reranker_logits``; the tokens from GENERATIVE_RERANKER_POSITIVE_TOKEN
  and GENERATIVE_RERANKER_NEGATIVE_TOKEN). With --packing (and --padding_free, on by default) the conversations
  run as packed rows, a query shared by its documents held once (--prefix_sharing), each conversation read at
  its own last token: the padded batch's scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from alignkit.algorithms.embedding import last_token_states, packed_last_token_states
from alignkit.data.collate import Batch
from alignkit.data.group_collate import GroupBatch
from alignkit.losses.retrieval import RERANKER_LOSSES, listwise_reranker_loss, pointwise_reranker_loss
from alignkit.models.packing import Layout

MODEL_LOSS = "model"  # reranker without --loss_type: transformers' one-label (regression) loss


def reranker_loss(loss_type: str, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if loss_type == "pointwise_reranker":
        return pointwise_reranker_loss(scores, labels)
    if loss_type == "listwise_reranker":
        return listwise_reranker_loss(scores, labels)
    return F.mse_loss(scores.float(), labels.float())  # MODEL_LOSS


def yes_no_token_ids(tokenizer) -> tuple[int, int]:
    """The ids of GENERATIVE_RERANKER_POSITIVE_TOKEN ("yes") and ..._NEGATIVE_TOKEN ("no") as single tokens."""
    ids = []
    for variable, default in (("GENERATIVE_RERANKER_POSITIVE_TOKEN", "yes"),
                              ("GENERATIVE_RERANKER_NEGATIVE_TOKEN", "no")):
        token = os.environ.get(variable, default)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"{variable}={token!r} is not a token of this tokenizer; --task_type generative_reranker "
                             "scores logit(positive token) − logit(negative token): set both to tokens it has")
        ids.append(token_id)
    return ids[0], ids[1]


@dataclass
class Reranker:
    loss_type: str  # pointwise_reranker | listwise_reranker | model

    def __post_init__(self):
        if self.loss_type not in (*RERANKER_LOSSES, MODEL_LOSS):
            raise ValueError(f"--task_type reranker takes --loss_type {', '.join(RERANKER_LOSSES)}, "
                             f"not {self.loss_type}")

    rows: ClassVar[str] = "ranking"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    model_class: ClassVar[str] = "sequence_classifier"
    num_labels: ClassVar[int] = 1
    problem_type: ClassVar[str] = "regression"

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask).logits
        scores = logits.squeeze(-1)  # (N,)
        loss = reranker_loss(self.loss_type, scores, batch.labels)
        return loss, {"loss": loss.item()}


@dataclass
class GenerativeReranker:
    loss_type: str  # pointwise_reranker | listwise_reranker
    yes_id: int
    no_id: int
    # padded, packed (--packing, --padding_free) or prefix-shared forwards (a query held once for its
    # documents): each conversation is read at its own last token, so the scores are the same
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self):
        if self.loss_type not in RERANKER_LOSSES:
            raise ValueError(f"--task_type generative_reranker takes --loss_type {', '.join(RERANKER_LOSSES)}, "
                             f"not {self.loss_type}")

    rows: ClassVar[str] = "ranking"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    model_class: ClassVar[str] = "causal_lm"

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = reranker_loss(self.loss_type, self.scores(model, batch.sequences), batch.labels)
        return loss, {"loss": loss.item()}

    def scores(self, model, sequences: Batch) -> torch.Tensor:
        """(N, T) right-padded conversations → (N,) logit("yes") − logit("no") at each one's last token."""

        def padded():
            return self.yes_minus_no(model, last_token_states(model, sequences.input_ids, sequences.attention_mask))

        if not self.layout.runs_packed(model, sequences):
            return padded()

        def packed():
            return self.yes_minus_no(model, packed_last_token_states(model, self.layout.pack(sequences)))

        if self.layout.check is None:
            return packed()
        return self.layout.check.run(model, packed, padded, lambda fast, slow: (fast - slow).abs().max())

    def yes_minus_no(self, model, states: torch.Tensor) -> torch.Tensor:
        """(N, D) last-token states → (N,) scores, through the LM head's "yes" and "no" rows only."""
        weight = model.get_output_embeddings().weight[[self.yes_id, self.no_id]]  # (2, D)
        logits = F.linear(states, weight).float()  # (N, 2)
        return logits[:, 0] - logits[:, 1]
