"""Supervised fine-tuning: token-level cross-entropy on the trained (assistant) tokens; with
``enable_dft_loss``, Dynamic Fine-Tuning's probability-weighted cross-entropy (``alignkit.losses.sft``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.data.collate import Batch
from alignkit.losses.sft import dft_token_logps
from alignkit.models.packing import Layout


@dataclass
class SFT:
    layout: Layout = field(default_factory=Layout)  # padded, packed or prefix-shared forwards: same numbers
    enable_dft_loss: bool = False  # ms-swift's --enable_dft_loss: each token's CE weighted by sg(p)

    # What the builders read instead of switching on the class (see alignkit/algorithms/__init__.py).
    rows: ClassVar[str] = "sft"
    loss_unit: ClassVar[str] = "tokens"  # token-level cross-entropy: a micro-batch weighs by its trained tokens
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        per_token = dft_token_logps if self.enable_dft_loss else None
        logps, counts = self.layout.logps(model, batch, per_token=per_token)  # (N,), (N,)
        # Mean over all trained tokens of the micro-batch, as transformers' causal-LM loss does (DFT too).
        loss = -logps.sum() / counts.sum().clamp(min=1)
        return loss, {"loss": loss.item()}
