"""Which speed-ups a training run uses (docs/performance.md), and the one log line that says so."""

from __future__ import annotations

import logging

from alignkit.config.run import RunArguments
from alignkit.models.packing import Layout, supports_packing
from alignkit.models.placement import split_map

logger = logging.getLogger("alignkit")


def choose_layout(args: RunArguments, algorithm_name: str, model) -> tuple[Layout, dict[str, str]]:
    """The forward layout this run's algorithm uses, and why a speed-up asked for is off."""
    reasons: dict[str, str] = {}
    padding_free = args.padding_free
    if padding_free and split_map(model) is not None:
        # The packed logits mask reaches the model on its first device, the last hidden states sit on its last.
        padding_free = False
        reasons["padding-free packing"] = "a model split by --device_map runs padded batches"
    elif padding_free and args.neftune_noise_alpha is not None:
        # transformers scales NEFTune's noise by the batch's padded length; a packed row is far longer.
        padding_free = False
        reasons["padding-free packing"] = "--neftune_noise_alpha scales its noise by the padded length"
    elif padding_free and not supports_packing(model):
        padding_free = False
        reasons["padding-free packing"] = f"needs sdpa or eager attention, not {model.config._attn_implementation}"
        logger.warning("--padding_free %s: using padded batches", reasons["padding-free packing"])
    prefix_sharing = padding_free and args.prefix_sharing
    if args.prefix_sharing and not padding_free and "padding-free packing" in reasons:
        reasons["prompt-prefix sharing"] = "needs padding-free packing"
    return Layout(padding_free=padding_free, prefix_sharing=prefix_sharing), reasons


def log_speedups(layout: Layout, *, precompute: bool, precision: str, gradient_checkpointing: bool,
                 reasons: dict[str, str] | None = None) -> None:
    """One line saying which speed-ups this run has on and off, and why one asked for is off
    (docs/performance.md measures each)."""
    reasons = reasons or {}
    speedups = {
        "padding-free packing": layout.padding_free,
        "prompt-prefix sharing": layout.prefix_sharing,
        "precomputed reference log-probs": precompute,
        "bf16 autocast": precision == "bf16",
        "LM head on labelled positions only": True,
        "gradient checkpointing": gradient_checkpointing,
    }
    off = [f"{k} ({reasons[k]})" if k in reasons else k for k, v in speedups.items() if not v]
    logger.info("Speed-ups on: %s; off: %s", ", ".join(k for k, v in speedups.items() if v) or "none",
                ", ".join(off) or "none")
