"""The frozen reference policy of KL-regularised objectives (DPO and friends)."""

from __future__ import annotations

import copy
import logging

import torch

from alignkit.data.collate import Batch
from alignkit.packing import preference_logps

logger = logging.getLogger("alignkit")


class Reference:
    """Reference log-probs from a frozen model, or from the policy with its LoRA adapter switched off.

    With LoRA the base weights never change, so disabling the adapter *is* the starting policy and costs
    no memory; full fine-tuning needs a frozen copy (or the user's --ref_model).
    """

    def __init__(self, frozen_model=None, *, padding_free: bool = False, prefix_sharing: bool = False):
        self.frozen_model = frozen_model
        self.layout = {"padding_free": padding_free, "prefix_sharing": prefix_sharing}
        if frozen_model is not None:
            frozen_model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, batch: Batch, *, average: bool = False):
        if self.frozen_model is not None:
            return preference_logps(self.frozen_model, batch, average=average, **self.layout)
        with policy.disable_adapter():
            return preference_logps(policy, batch, average=average, **self.layout)


def make_reference(model, *, ref_model: str | None, full: bool, precompute: bool, batches: list[list], collate,
                   padding_free: bool, prefix_sharing: bool, template: str, max_length: int, precision: str):
    """The run's reference, built from ``model`` before any adapter is attached (its starting weights).

    ``precompute``: one no-grad pass over ``batches`` (of training and held-out pairs) into the disk cache of
    alignkit.reference_cache, and no reference model is kept. Otherwise a live ``Reference``: a frozen copy
    for full fine-tuning or the --ref_model, the adapter-disabled policy for LoRA.
    """
    from alignkit.model import load_causal_lm, resolve_model_path
    from alignkit.reference_cache import precompute_reference

    frozen = None
    if ref_model or (full and not precompute):
        frozen = load_causal_lm(resolve_model_path(ref_model), None) if ref_model else copy.deepcopy(model)
    if not precompute:
        return Reference(frozen, padding_free=padding_free, prefix_sharing=prefix_sharing)
    if torch.cuda.is_available():  # the pass runs where training will
        model.to("cuda")
    reference = precompute_reference(frozen if frozen is not None else model, batches, collate, template=template,
                                     max_length=max_length, precision=precision)
    del frozen  # the --ref_model is not needed any more
    return reference
