"""The frozen reference policy of KL-regularised objectives (DPO, KTO)."""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch
from alignkit.models.packing import Layout
from alignkit.models.placement import frozen_copy, place, split_map


class Reference:
    """Reference log-probs from a frozen model, or from the policy with its LoRA adapter switched off.

    With LoRA the base weights never change, so disabling the adapter *is* the starting policy and costs
    no memory; full fine-tuning needs a frozen copy (or the user's --ref_model). ``layout``: padded, packed
    or prefix-shared forwards (alignkit.models.packing), the same numbers.
    """

    def __init__(self, frozen_model=None, *, layout: Layout | None = None):
        self.frozen_model = frozen_model
        self.layout = layout or Layout()
        if frozen_model is not None:
            frozen_model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, policy, batch: Batch, *, average: bool = False, ld_alpha: float | None = None):
        if self.frozen_model is not None:
            return self.layout.logps(self.frozen_model, batch, average=average, ld_alpha=ld_alpha)
        from accelerate.utils import extract_model_from_parallel

        policy = extract_model_from_parallel(policy)  # DDP's wrapper has no disable_adapter
        with policy.disable_adapter():
            return self.layout.logps(policy, batch, average=average, ld_alpha=ld_alpha)


def make_reference(model, *, ref_model: str | None, full: bool, precompute: bool, batches: list[list], collate,
                   layout: Layout, template: str, max_length: int, precision: str, device,
                   ld_alpha: float | None = None, load_dtype: torch.dtype = torch.float32):
    """The run's reference, built from ``model`` before any adapter is attached (its starting weights).

    ``precompute``: one no-grad pass over ``batches`` (this process's training micro-batches and, on the main
    process, the held-out ones) into the disk cache of alignkit.models.reference_cache, and no reference model is
    kept. Otherwise a live ``Reference`` on ``device``: a frozen copy for full fine-tuning or the --ref_model,
    the adapter-disabled policy for LoRA. ``load_dtype``: the precision a --ref_model loads in (--torch_dtype).
    """
    from alignkit.models.load import load_causal_lm, resolve_model_path
    from alignkit.models.reference_cache import precompute_reference

    frozen = None
    if ref_model or (full and not precompute):
        # A full copy on every process's own device (DDP and ZeRO-1/2 alike); it is frozen, so never sharded.
        # A policy split by --device_map gets a reference split by the same map.
        frozen = place(load_causal_lm(resolve_model_path(ref_model, "--ref_model"), None, load_dtype,
                                          device_map=split_map(model))
                       if ref_model else frozen_copy(model), device)
    if not precompute:
        return Reference(frozen, layout=layout)
    source = frozen if frozen is not None else place(model, device)  # the pass runs where training will
    # The run's layout, so that its self-check (--check_speedups) covers the cached log-probs too.
    reference = precompute_reference(source, batches, collate, template=template, max_length=max_length,
                                     precision=precision, layout=layout, ld_alpha=ld_alpha)
    del frozen  # the --ref_model is not needed any more
    return reference
