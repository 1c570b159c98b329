"""Direct Preference Optimization (https://arxiv.org/abs/2305.18290) and its loss-type family, wired to the loop.

The objectives live in ``alignkit.losses.preference`` (``combine_dpo_losses`` sums the ``--loss_type`` list with
``--loss_weights``); this file runs the forwards and adds RPO's NLL term
(https://arxiv.org/abs/2404.19733): loss = Σ_k w_k·L_k + rpo_alpha · NLL(chosen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.data.collate import Batch
from alignkit.losses.preference import combine_dpo_losses
from alignkit.models.packing import Layout
from alignkit.models.reference import Reference


@dataclass
class DPO:
    beta: float
    loss_types: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None
    reference_free: bool = False
    ld_alpha: float | None = None
    discopop_tau: float = 0.05
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 1.0
    convention: str = "swift"
    # The adapter-disabled policy (LoRA) unless a frozen model is attached for full fine-tuning.
    reference: Reference = field(default_factory=Reference)
    # Padded, packed or prefix-shared forwards (alignkit.models.packing): the same log-probs from fewer tokens.
    layout: Layout = field(default_factory=Layout)
    bco_mean: RunningRewardMean = field(default_factory=lambda: RunningRewardMean(), init=False, repr=False)

    def __post_init__(self):
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1] (1 is plain DPO), got {self.ld_alpha}")
        # The loss functions check every flag combination; one call on a dummy pair surfaces their
        # errors before any data or model is loaded.
        zero = torch.zeros(1)
        self._objective(zero, zero, zero, zero, torch.ones(1), torch.ones(1), zero, bco_running_mean=None)

    def _objective(self, chosen, rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, nll,
                   bco_running_mean):
        return combine_dpo_losses(
            chosen, rejected, ref_chosen, ref_rejected,
            loss_types=self.loss_types,
            loss_weights=self.loss_weights,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            reference_free=self.reference_free,
            f_divergence_type=self.f_divergence_type,
            f_alpha_divergence_coef=self.f_alpha_divergence_coef,
            discopop_tau=self.discopop_tau,
            bco_running_mean=bco_running_mean,
            chosen_nll=nll,
            convention=self.convention,
        )

    rows: ClassVar[str] = "preference"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        pairs = len(batch.row_ids)
        logps, counts = self.layout.logps(model, batch, ld_alpha=self.ld_alpha)  # (2B,) chosen then rejected
        chosen, rejected = logps[:pairs], logps[pairs:]
        ref_logps = torch.zeros_like(logps)  # (2B,) the uniform reference of --reference_free
        if not self.reference_free:
            ref_logps, _ = self.reference.logps(model, batch, ld_alpha=self.ld_alpha)
        ref_chosen, ref_rejected = ref_logps[:pairs], ref_logps[pairs:]
        # NLL per chosen token over the micro-batch, as in TRL's RPO and its "sft" loss type.
        nll = -chosen.sum() / counts[:pairs].sum().clamp(min=1)
        delta = None
        if "bco_pair" in self.loss_types and self.convention == "swift":
            delta = self.bco_mean.update(self.beta * (logps - ref_logps), model.training)
        out = self._objective(chosen, rejected, ref_chosen, ref_rejected, counts[:pairs], counts[pairs:], nll, delta)
        loss = out.losses.mean()
        if self.rpo_alpha:
            loss = loss + self.rpo_alpha * nll
        return loss, preference_metrics(loss, out.chosen_rewards, out.rejected_rewards, chosen, rejected, nll)


class RunningRewardMean:
    """δ of ms-swift's (TRL 0.x) bco_pair: the running mean of the batch-mean rewards β·[h_w, h_l].

    Updated with each training micro-batch before use (evaluation reads it without updating), so the
    first batch is shifted by its own mean. Not saved in checkpoints: a resumed run restarts it at 0.
    """

    def __init__(self):
        self.mean, self.count = 0.0, 0

    def update(self, rewards: torch.Tensor, training: bool) -> torch.Tensor:
        if training:
            self.count += 1
            self.mean += (rewards.detach().float().mean().item() - self.mean) / self.count
        return torch.tensor(self.mean, device=rewards.device)


def preference_metrics(loss, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, nll) -> dict[str, float]:
    """The metric names TRL and ms-swift users chart (DPO, CPO, SimPO, ORPO)."""
    return {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen_logps.detach().mean().item(),
        "logps/rejected": rejected_logps.detach().mean().item(),
        "nll_loss": nll.item(),
    }
