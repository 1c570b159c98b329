"""Reward modelling wired to the loop: a scalar head scores both answers of a pair (Bradley–Terry).

loss = mean(−log σ(r_w − r_l − m)) (+ c·(r_w + r_l)²), ``alignkit.losses.preference.reward_model_loss``; the model is an
``alignkit.models.reward_model.SequenceRewardModel``, m the per-pair ``margin`` column when the data has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.data.collate import Batch
from alignkit.losses.preference import reward_model_loss
from alignkit.models.packing import Layout, supports_packing


@dataclass
class RewardModeling:
    loss_type: str = "log_sig"  # log_sig | log_exp | hinge
    center_rewards_coefficient: float | None = None
    layout: Layout = field(default_factory=Layout)  # padded, packed or prefix-shared forwards: same rewards

    def __post_init__(self):
        reward_model_loss(torch.zeros(1), torch.zeros(1), loss_type=self.loss_type)  # unknown types fail early

    rows: ClassVar[str] = "preference"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        pairs = len(batch.row_ids)
        if self.layout.padding_free and not batch.model_inputs and supports_packing(model):
            rewards = model(packed=self.layout.pack(batch))  # (2B,) chosen, rejected
        else:
            rewards = model(batch.input_ids, batch.attention_mask, **(batch.model_inputs or {}))
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        out = reward_model_loss(
            chosen, rejected, loss_type=self.loss_type, margin=batch.margins,
            center_rewards_coefficient=self.center_rewards_coefficient,
        )
        loss = out.losses.mean()
        gap = out.chosen_rewards - out.rejected_rewards  # (B,)
        # TRL's RewardTrainer names (accuracy, margin, mean_reward) and the rewards/* of the DPO family.
        return loss, {
            "loss": loss.item(),
            "accuracy": (gap > 0).float().mean().item(),
            "margin": gap.mean().item(),
            "rewards/chosen": out.chosen_rewards.mean().item(),
            "rewards/rejected": out.rejected_rewards.mean().item(),
            "mean_reward": rewards.detach().mean().item(),
        }
