"""The frozen reference policy of KL-regularised objectives (DPO, KTO)."""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch
from alignkit.logprobs import forward_logps


class Reference:
    """Reference log-probs from a frozen model, or from the policy with its LoRA adapter switched off.

    With LoRA the base weights never change, so disabling the adapter *is* the starting policy and costs
    no memory; full fine-tuning needs a frozen copy (or the user's --ref_model).
    """

    def __init__(self, frozen_model=None):
        self.frozen_model = frozen_model
        if frozen_model is not None:
            frozen_model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, batch: Batch, *, average: bool = False, ld_alpha: float | None = None):
        if self.frozen_model is not None:
            return forward_logps(self.frozen_model, batch, average=average, ld_alpha=ld_alpha)
        from accelerate.utils import extract_model_from_parallel

        policy = extract_model_from_parallel(policy)  # DDP's wrapper has no disable_adapter
        with policy.disable_adapter():
            return forward_logps(policy, batch, average=average, ld_alpha=ld_alpha)
