"""Direct Preference Optimization (https://arxiv.org/abs/2305.18290) wired to the loop.

The objective itself lives in ``alignkit.losses.dpo_loss``; this file runs the forwards and adds RPO's
NLL term (https://arxiv.org/abs/2404.19733): loss = DPO + rpo_alpha · NLL(chosen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch
from alignkit.losses import dpo_loss
from alignkit.packing import preference_logps
from alignkit.reference import Reference


@dataclass
class DPO:
    reference: Reference
    beta: float
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None
    padding_free: bool = False  # see alignkit.packing: the same log-probs from fewer tokens
    prefix_sharing: bool = False

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts = preference_logps(  # (2B,) chosen then rejected
            model, batch, padding_free=self.padding_free, prefix_sharing=self.prefix_sharing
        )
        ref_logps, _ = self.reference.logps(model, batch)  # (2B,)
        pairs = len(batch.row_ids)
        chosen, rejected = logps[:pairs], logps[pairs:]
        out = dpo_loss(
            chosen,
            rejected,
            ref_logps[:pairs],
            ref_logps[pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            chosen_lengths=counts[:pairs],
            rejected_lengths=counts[pairs:],
        )
        # NLL per chosen token over the micro-batch, as in TRL's RPO.
        nll = -chosen.sum() / counts[:pairs].sum().clamp(min=1)
        loss = out.losses.mean()
        if self.rpo_alpha:
            loss = loss + self.rpo_alpha * nll
        return loss, preference_metrics(loss, out.chosen_rewards, out.rejected_rewards, chosen, rejected, nll)


def preference_metrics(loss, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps, nll) -> dict[str, float]:
    """The metric names TRL and ms-swift users chart."""
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
