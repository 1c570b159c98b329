"""Embedding training (ms-swift's ``sft --task_type embedding``): a causal LM becomes an encoder whose embedding
of a sequence is its last layer's hidden state at the last non-padding token, L2-normalised (ms-swift's
``patch_output_normalizer``: the LM head replaced by the identity); the loss is the --loss_type's from
``alignkit.losses.retrieval`` (infonce, cosine_similarity, contrastive, online_contrastive)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from alignkit.data.group_collate import GroupBatch
from alignkit.losses.retrieval import EMBEDDING_LOSSES, embedding_loss
from alignkit.models.packing import Packed, packed_attention_mask

logger = logging.getLogger("alignkit")


def last_token_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) right-padded ids → (N, D): the final hidden state (after the model's last norm) at each row's last
    non-padding token. ``logits_to_keep=1`` spares the (N, T, V) logits nobody reads."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # (N, T, D)
    last = attention_mask.sum(dim=1) - 1  # (N,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def packed_last_token_states(model, packed: Packed) -> torch.Tensor:
    """``last_token_states`` of the N sequences laid out by ``alignkit.models.packing.pack``: (N, D), each read
    at its own sequence's last token (``last_rows``, ``last_nodes``), which saw only its own sequence's tokens,
    so the states are the padded batch's."""
    out = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                attention_mask=packed_attention_mask(model, packed), output_hidden_states=True, logits_to_keep=1,
                use_cache=False)
    return out.hidden_states[-1][packed.last_rows, packed.last_nodes]  # (N, D)


@dataclass
class Embedding:
    loss_type: str  # infonce | cosine_similarity | contrastive | online_contrastive

    def __post_init__(self):
        if self.loss_type not in EMBEDDING_LOSSES:
            raise ValueError(f"--task_type embedding takes --loss_type {', '.join(EMBEDDING_LOSSES)}, "
                             f"not {self.loss_type}")
        if self.loss_type == "infonce" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            logger.info("infonce: in-batch negatives come from each process's own micro-batch (ms-swift gathers "
                        "them across processes)")

    rows: ClassVar[str] = "embedding"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    model_class: ClassVar[str] = "causal_lm"

    def loss(self, model, batch: GroupBatch) -> tuple[torch.Tensor, dict[str, float]]:
        states = last_token_states(model, batch.sequences.input_ids, batch.sequences.attention_mask)
        embeddings = F.normalize(states.float(), p=2, dim=-1)  # (N, D)
        loss = embedding_loss(self.loss_type, embeddings, batch.labels)
        return loss, {"loss": loss.item()}
