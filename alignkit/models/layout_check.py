"""The speed-ups check themselves on the user's own model: the first batch a packed or prefix-shared layout runs
is also run padded, and the log-probs compared.

Packing and prefix sharing are exact only when the model's attention takes the layout's mask and position ids
as Llama's does; an architecture whose attention or masking differs (sliding windows, a bidirectional prefix,
a custom mask function, a kernel that ignores the mask) would train on wrong log-probs without a word. So the
first batch also runs padded, without gradient (see ``LayoutCheck.run``); if the two differ by more than the compute
dtype's rounding explains, the run says by how much, on which architecture, and uses padded batches from then
on (``--check_speedups false`` skips the check). The difference is measured per token: |Δ sequence log-prob| /
its labelled tokens, the largest over the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import torch

logger = logging.getLogger("alignkit")

# Per-token differences that rounding explains, by compute dtype. Measured between the padded and prefix-shared
# layouts on the built-in model (SmolLM2-135M, 16 built-in pairs, CPU, sdpa): at most 4.3e-6 in fp32 and 0.057
# under bf16 autocast; a mask that lets each sequence see the ones before it in its row (an answer its pair's
# other answer) differs by 0.1 to 1.2 per token, 0.6 or more at the worst sequence of each batch of 4 pairs.
TOLERANCE_PER_TOKEN = {torch.float32: 1e-3, torch.bfloat16: 0.2, torch.float16: 0.05}


def logps_tolerance(dtype: torch.dtype) -> float:
    """The largest per-token log-prob difference between two exact layouts that ``dtype`` rounding explains."""
    return TOLERANCE_PER_TOKEN.get(dtype, TOLERANCE_PER_TOKEN[torch.float32])


def compute_dtype(model, device: torch.device) -> torch.dtype:
    """The dtype the model's matrix products run in: autocast's where it is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class LayoutCheck:
    """One per run, shared by every forward of the run's layout (policy and reference): ``pending`` until the
    first batch, then ``passed`` (the fast layout runs) or ``failed`` (the padded path runs)."""

    def __init__(self, what: str = "padding-free packing"):
        self.what = what
        self.state = "pending"
        self.difference: float | None = None

    def run(self, model, fast: Callable, padded: Callable, difference: Callable):
        """``fast()`` or ``padded()``'s result; the first call also decides, from ``difference(fast_out,
        padded_out)`` (a 0-d tensor, per token), which one this and every later call uses.

        The comparison runs without gradient and without dropout: where the first call is itself such a pass
        (the reference pass of DPO and KTO, a rollout's log-probs) it costs the one padded forward; in a training
        step (dropout would make the two differ, and must not draw random numbers the run would otherwise use)
        both run in eval mode first, then the step's own forward."""
        if self.state == "passed":
            return fast()
        if self.state == "failed":
            return padded()
        if model.training or torch.is_grad_enabled():
            with torch.no_grad(), evaluating(model):
                self.decide(model, fast(), padded(), difference)
            return fast() if self.state == "passed" else padded()
        out, reference = fast(), padded()
        self.decide(model, out, reference, difference)
        return out if self.state == "passed" else reference

    def decide(self, model, fast_out, padded_out, difference: Callable) -> None:
        measured = difference(fast_out, padded_out).detach().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process takes the same path: sharded engines run collectives inside each forward.
            torch.distributed.all_reduce(measured, op=torch.distributed.ReduceOp.MAX)
        self.difference = measured.item()
        dtype = compute_dtype(model, measured.device)
        tolerance = logps_tolerance(dtype)
        config = config_of(model)
        name = (getattr(config, "architectures", None) or [type(model).__name__])[0]
        setting = f"{name}, {config._attn_implementation} attention, {str(dtype).removeprefix('torch.')}"
        if self.difference <= tolerance:
            self.state = "passed"
            logger.info("Speed-up check (%s) on %s: the first batch's log-probs are within %.2g per token of the "
                        "padded path's (tolerance %.2g)", self.what, setting, self.difference, tolerance)
            return
        self.state = "failed"
        logger.warning("Speed-up check (%s) on %s: the first batch's log-probs differ from the padded path's by "
                       "%.3g per token (tolerance %.2g): this model's attention does not take the packed layout "
                       "as Llama's does, so this run uses padded batches (--check_speedups false skips the check)",
                       self.what, setting, self.difference, tolerance)


@contextmanager
def evaluating(model):
    """Every module in eval mode (no dropout), each put back as it was."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def sequence_difference(fast: tuple, padded: tuple, *, average: bool) -> torch.Tensor:
    """For ``(logps (N,), counts (N,))`` pairs: the largest |Δ logp| per labelled token."""
    delta = (fast[0].detach().float() - padded[0].float()).abs()
    return (delta if average else delta / padded[1].clamp(min=1)).max()


def config_of(model):
    """The model's config, through a DDP or DeepSpeed wrapper, which has none of its own."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config
