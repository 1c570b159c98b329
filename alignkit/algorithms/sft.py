"""Supervised fine-tuning: token-level cross-entropy on the trained (assistant) tokens."""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch
from alignkit.logprobs import forward_logps


class SFT:
    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logps, counts = forward_logps(model, batch)  # (N,), (N,)
        # Mean over all trained tokens of the micro-batch, as transformers' causal-LM loss does.
        loss = -logps.sum() / counts.sum().clamp(min=1)
        return loss, {"loss": loss.item()}
