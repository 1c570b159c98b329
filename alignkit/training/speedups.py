"""Which speed-ups a training run uses (docs/performance.md), and the one log line that says so."""

from __future__ import annotations

import importlib.util
import logging

import torch

from alignkit.config.run import RunArguments
from alignkit.models.layout_check import LayoutCheck
from alignkit.models.packing import (
    ROW_TOKENS,
    Layout,
    attention_of,
    is_flash,
    supports_packing,
    supports_prefix_sharing,
)
from alignkit.models.placement import split_map

logger = logging.getLogger("alignkit")

PACKING_SPEEDUPS = ("padding-free packing", "prompt-prefix sharing")
# Packed rows longer than this run on a GPU with flex_attention's block masks: the dense (L × L) mask of sdpa
# costs ~3 bytes per entry (boolean, then as the kernel's bias), 48 MB per row here and growing with L².
FLEX_FROM_TOKENS = 4096


def choose_layout(args: RunArguments, algorithm_name: str, model, precision: str = "fp32"
                  ) -> tuple[Layout, dict[str, str]]:
    """The forward layout this run's algorithm uses, and why a speed-up asked for is off. On a GPU the model's
    attention may change to one whose packed rows need no (L × L) mask (``accelerator_attention``)."""
    reasons: dict[str, str] = {}
    # A dataset pack runs as one row of --packing_length tokens: packing implies padding-free forwards, as in
    # ms-swift. Where they cannot run (below), a pack's rows run padded: the same numbers, more tokens.
    padding_free = args.padding_free or args.packing
    if args.packing and not args.padding_free:
        logger.info("--packing runs packs as padding-free rows (--padding_free false is overridden, as in ms-swift)")
    row_tokens = (args.packing_length or args.max_length) if args.packing else None
    if padding_free and args.train_type == "longlora":
        # S2-Attn splits each row into quarters; a packed row's quarters would cut across its sequences.
        padding_free = False
        reasons["padding-free packing"] = "LongLoRA's shifted sparse attention groups each padded row"
    split_sequences = args.sequence_parallel_size > 1
    if padding_free and split_map(model) is None:
        implementation = accelerator_attention(model, prefix_sharing=args.prefix_sharing, precision=precision,
                                               row_tokens=max(ROW_TOKENS, args.max_length or 0, row_tokens or 0))
        if split_sequences and implementation == "flex_attention":
            implementation = None  # Ulysses rebuilds a plain causal block mask: a packed row's would be lost
        if implementation is not None:
            logger.info("Packed rows on the GPU: %s attention instead of %s (docs/performance.md)", implementation,
                        attention_of(model))
            model.set_attn_implementation(implementation)
    if padding_free and split_sequences and not is_flash(attention_of(model)):
        # Ulysses attends over the gathered row with position ids and a causal mask only; flash attention's
        # varlen kernels read a packed row's sequences from the position ids, the others need its mask.
        padding_free = False
        reasons["padding-free packing"] = (f"--sequence_parallel_size runs padded batches with "
                                           f"{attention_of(model)} attention (packed rows need flash attention)")
        logger.info("--padding_free: using padded batches, since %s", reasons["padding-free packing"])
    elif padding_free and split_map(model) is not None:
        # The packed logits mask reaches the model on its first device, the last hidden states sit on its last.
        padding_free = False
        reasons["padding-free packing"] = "a model split by --device_map runs padded batches"
    elif padding_free and args.neftune_noise_alpha is not None:
        # transformers scales NEFTune's noise by the batch's padded length; a packed row is far longer.
        padding_free = False
        reasons["padding-free packing"] = "--neftune_noise_alpha scales its noise by the padded length"
    elif padding_free and getattr(model.config.get_text_config(), "output_router_logits", False):
        # transformers' load-balancing loss weighs tokens by a 2-D attention mask; packed rows carry a 4-D one.
        padding_free = False
        reasons["padding-free packing"] = "the router's load-balancing loss (--router_aux_loss_coef) needs 2-D masks"
        logger.info("--padding_free: using padded batches, since %s", reasons["padding-free packing"])
    elif padding_free and not supports_packing(model):
        padding_free = False
        reasons["padding-free packing"] = (f"needs sdpa, eager, flex or flash attention, not "
                                           f"{model.config._attn_implementation}")
        logger.warning("--padding_free %s: using padded batches", reasons["padding-free packing"])
    prefix_sharing = padding_free and args.prefix_sharing
    if args.prefix_sharing and not padding_free and "padding-free packing" in reasons:
        reasons["prompt-prefix sharing"] = "needs padding-free packing"
    if prefix_sharing and not supports_prefix_sharing(model):
        prefix_sharing = False
        reasons["prompt-prefix sharing"] = f"{attention_of(model)} takes no mask for a trie of sequences"
    return Layout(padding_free=padding_free, prefix_sharing=prefix_sharing, row_tokens=row_tokens,
                  check=layout_check(args, prefix_sharing) if padding_free else None), reasons


def accelerator_attention(model, *, prefix_sharing: bool, precision: str, row_tokens: int) -> str | None:
    """The attention implementation packed rows should use on a GPU, or None to keep the model's (always on a
    CPU, where the dense mask is the fastest, and whenever the model was loaded with another than sdpa).

    flash attention (installed, bf16/fp16, no prefix sharing): varlen kernels from the position ids, no mask;
    else rows longer than FLEX_FROM_TOKENS: flex_attention with block masks; shorter rows keep sdpa's dense
    mask, which is small there and needs no compilation."""
    if not torch.cuda.is_available() or attention_of(model) != "sdpa":
        return None
    if not prefix_sharing and precision in ("bf16", "fp16") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if row_tokens > FLEX_FROM_TOKENS:
        return "flex_attention"
    return None


def layout_check(args: RunArguments, prefix_sharing: bool) -> LayoutCheck | None:
    """The run's self-check of its packed layout (--check_speedups), or None."""
    if not args.check_speedups:
        return None
    return LayoutCheck("padding-free packing" + (" + prompt-prefix sharing" if prefix_sharing else ""))


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
