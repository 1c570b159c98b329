"""Sequence classification (ms-swift's ``sft --task_type seq_cls``) wired to the loop: a transformers
``AutoModelForSequenceClassification`` scores each row at its last non-padding token, and the loss follows
--problem_type (cross-entropy, binary cross-entropy with logits, or mean squared error) exactly as transformers
computes it: ``alignkit.losses.classification.sequence_classification_loss``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from alignkit.data.collate import ClassifiedBatch
from alignkit.losses.classification import PROBLEM_TYPES, classification_accuracy, sequence_classification_loss


@dataclass
class SequenceClassification:
    num_labels: int
    problem_type: str  # single_label_classification | multi_label_classification | regression

    def __post_init__(self):
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem_type {self.problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")

    rows: ClassVar[str] = "classification"
    loss_unit: ClassVar[str] = "examples"  # every problem type's loss is a mean over rows of a per-row mean
    scalar_head: ClassVar[bool] = False  # the head is the model's own (score), not alignkit's reward head
    needs_reference: ClassVar[bool] = False

    def loss(self, model, batch: ClassifiedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        # The model pools its logits at each row's last non-padding token, (B, num_labels).
        logits = model(input_ids=batch.sequences.input_ids, attention_mask=batch.sequences.attention_mask).logits
        loss = sequence_classification_loss(logits, batch.targets, problem_type=self.problem_type)
        metrics = {"loss": loss.item()}
        accuracy = classification_accuracy(logits.detach(), batch.targets, problem_type=self.problem_type)
        if accuracy is not None:
            metrics["acc"] = accuracy.item()
        return loss, metrics
