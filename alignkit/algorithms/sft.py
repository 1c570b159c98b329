"""Supervised fine-tuning: token-level cross-entropy on the trained (assistant) tokens."""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch
from alignkit.models.packing import Layout


class SFT:
    def __init__(self, layout: Layout | None = None):
        self.layout = layout or Layout()  # padded, packed or prefix-shared forwards: same numbers

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts = self.layout.logps(model, batch)  # (N,), (N,)
        # Mean over all trained tokens of the micro-batch, as transformers' causal-LM loss does.
        loss = -logps.sum() / counts.sum().clamp(min=1)
        return loss, {"loss": loss.item()}
