"""The sequence-classification losses (ms-swift's --task_type seq_cls), as transformers' sequence-classification
models compute them (``transformers.loss.loss_utils.ForSequenceClassificationLoss``), per --problem_type:

- single_label_classification: cross-entropy, mean over rows: −(1/B)·Σ_i log softmax(z_i)[y_i];
- multi_label_classification: binary cross-entropy with logits, mean over rows × labels:
  −(1/(B·L))·Σ_i Σ_c [y_ic·log σ(z_ic) + (1 − y_ic)·log(1 − σ(z_ic))];
- regression: mean squared error over rows (× labels): (1/(B·L))·Σ (z − y)².

z = ``logits`` (B, L), pooled at each row's last non-padding token; y = ``targets``: (B,) class indices,
(B, L) multi-hot, or (B,) / (B, L) floats. Each is a mean over rows of a per-row mean, so micro-batches weigh
by their rows (loss unit "examples").
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def sequence_classification_loss(logits: Tensor, targets: Tensor, *, problem_type: str) -> Tensor:
    """The mean loss of a batch; computed in fp32 (under bf16 autocast the head's logits are bf16)."""
    logits = logits.float()
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if problem_type == "regression":
        if logits.shape[-1] == 1:  # (B, 1) against (B,), as transformers squeezes both
            return F.mse_loss(logits.squeeze(), targets.float().squeeze())
        return F.mse_loss(logits, targets.float())
    raise ValueError(f"Unknown problem_type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")


def classification_accuracy(logits: Tensor, targets: Tensor, *, problem_type: str) -> Tensor | None:
    """ms-swift's seq_cls ``acc``: the argmax class is the label (single-label); every label's σ(z) > 0.5 agrees
    with the target (multi-label, per row). None for regression."""
    if problem_type == "single_label_classification":
        return (logits.argmax(-1) == targets).float().mean()
    if problem_type == "multi_label_classification":
        return ((logits.sigmoid() > 0.5) == targets.bool()).all(-1).float().mean()
    return None
