"""Reference-free contrastive objectives wired to the loop: CPO and SimPO.

CPO (https://arxiv.org/abs/2401.08417): loss = mean L_prefer(π_w, π_l) + cpo_alpha · NLL(chosen), on summed
log-probs (length-averaged for ``ipo``, as TRL). SimPO (https://arxiv.org/abs/2405.14734): the same shape
with the length-averaged, margin-shifted ``simpo_loss``; TRL runs it as a CPO loss type, alignkit keeps it
as its own ``--rlhf_type simpo`` (and ``--rlhf_type cpo --loss_type simpo`` gives TRL's spelling).
The objectives themselves are ``alignkit.losses.preference.cpo_loss`` and ``simpo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.algorithms.dpo import preference_metrics
from alignkit.data.collate import Batch
from alignkit.losses.preference import PreferenceLoss, cpo_loss, simpo_loss
from alignkit.models.packing import Layout


@dataclass
class CPO:
    beta: float
    loss_type: str = "sigmoid"  # sigmoid | hinge | ipo
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0
    layout: Layout = field(default_factory=Layout)  # padded, packed or prefix-shared forwards: same numbers

    def __post_init__(self):
        self.objective(torch.zeros(1), torch.zeros(1))  # raises on an unknown loss type before any loading

    rows: ClassVar[str] = "preference"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False  # reference-free by design

    def objective(self, chosen: torch.Tensor, rejected: torch.Tensor) -> PreferenceLoss:
        return cpo_loss(chosen, rejected, beta=self.beta, loss_type=self.loss_type,
                        label_smoothing=self.label_smoothing)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return contrastive_loss(self, model, batch, average=self.loss_type == "ipo", cpo_alpha=self.cpo_alpha)


@dataclass
class SimPO:
    beta: float
    gamma: float = 1.0
    label_smoothing: float = 0.0
    cpo_alpha: float = 1.0
    layout: Layout = field(default_factory=Layout)

    rows: ClassVar[str] = "preference"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False  # reference-free by design

    def objective(self, chosen: torch.Tensor, rejected: torch.Tensor) -> PreferenceLoss:
        return simpo_loss(chosen, rejected, beta=self.beta, gamma=self.gamma, label_smoothing=self.label_smoothing)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return contrastive_loss(self, model, batch, average=True, cpo_alpha=self.cpo_alpha)


def contrastive_loss(algorithm: CPO | SimPO, model, batch: Batch, *, average: bool, cpo_alpha: float):
    """mean(objective) + cpo_alpha · NLL(chosen); the NLL is per chosen token over the micro-batch (as TRL)."""
    pairs = len(batch.row_ids)
    sums, counts = algorithm.layout.logps(model, batch)  # (2B,) chosen then rejected, summed over answer tokens
    logps = sums / counts.clamp(min=1) if average else sums  # π̄ = π/|y| where the objective wants it
    chosen, rejected = logps[:pairs], logps[pairs:]
    out = algorithm.objective(chosen, rejected)
    nll = -sums[:pairs].sum() / counts[:pairs].sum().clamp(min=1)
    loss = out.losses.mean()
    if cpo_alpha:
        loss = loss + cpo_alpha * nll
    return loss, preference_metrics(loss, out.chosen_rewards, out.rejected_rewards, chosen, rejected, nll)
