"""Odds Ratio Preference Optimization (https://arxiv.org/abs/2403.07691) wired to the loop.

loss = NLL(chosen) + β · mean(−log σ(log odds(y_w) − log odds(y_l))), Eq. 6 with λ = β; the odds-ratio
term is ``alignkit.losses.preference.orpo_loss`` on length-averaged log-probs. The NLL covers the chosen *answer*
tokens only (the paper's L_SFT); TRL's ORPOTrainer also counts the prompt tokens of decoder-only models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.algorithms.dpo import preference_metrics
from alignkit.data.collate import Batch
from alignkit.losses.preference import orpo_loss
from alignkit.models.packing import Layout


@dataclass
class ORPO:
    beta: float
    layout: Layout = field(default_factory=Layout)  # padded, packed or prefix-shared forwards: same numbers

    rows: ClassVar[str] = "preference"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        pairs = len(batch.row_ids)
        sums, counts = self.layout.logps(model, batch)  # (2B,) chosen then rejected
        average = sums / counts.clamp(min=1)  # (2B,) log p per token, the p of the odds
        out = orpo_loss(average[:pairs], average[pairs:], beta=self.beta)
        nll = -sums[:pairs].sum() / counts[:pairs].sum().clamp(min=1)  # per chosen token, as TRL
        loss = nll + out.losses.mean()
        metrics = preference_metrics(
            loss, out.chosen_rewards, out.rejected_rewards, average[:pairs], average[pairs:], nll
        )
        metrics["log_odds_ratio"] = out.log_odds_ratio.mean().item()
        metrics["log_odds_chosen"] = out.log_odds_chosen.mean().item()
        return loss, metrics
