"""LongLoRA's shifted sparse attention, S2-Attn (Chen et al. 2023, arXiv 2309.12307), as ms-swift's
``--tuner_type longlora`` trains with it (swift/tuners/longlora/llama.py, group_size_ratio 0.25): while training,
each row of T tokens is split into 4 groups of G = T/4 tokens that attend causally within their group only, and
half of the heads do so on the row shifted by G/2 tokens (rolled, then rolled back), so that information flows
between neighbouring groups. In eval mode (evaluation, generation) attention is the model's full causal sdpa.

Registered with transformers' attention interface (``AttentionInterface``), so it replaces sdpa in the model's own
attention modules after RoPE; the LoRA adapter itself is plain peft LoRA (ms-swift 4.x wraps LoRA the same way for
lora and longlora). ms-swift's own patch rewrites LlamaAttention.forward with transformers' 4.4x signature
(``self.num_heads``, three return values), which transformers 5 no longer has.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

NAME = "longlora_s2"
GROUP_SIZE_RATIO = 0.25  # ms-swift's model.config.group_size_ratio


def group_size(length: int) -> int:
    """G for a row of ``length`` tokens; ms-swift requires it to divide the length."""
    size = int(length * GROUP_SIZE_RATIO)
    if size < 1 or length % size:
        raise AlignkitError(f"LongLoRA: a row of {length} tokens does not split into groups of {size} "
                            f"(group_size_ratio {GROUP_SIZE_RATIO}); use a --max_length divisible by 4")
    return size


def _shift(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Roll the second half of the heads by ``steps`` tokens: (B, H, T, D) -> (B, H, T, D)."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, half:].roll(steps, dims=2)], dim=1)


def s2_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention function: query (B, H, T, D), key and value (B, Hkv, T, D) -> ((B, T, H, D), None).
    ``attention_mask``: sdpa's (B, 1, T, T) mask, or None for a plain causal one; each group takes the mask's first
    (G, G) block, as ms-swift does (right-padded rows have their padding at the end, behind every real token)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, head_dim = query.shape
    size = group_size(length)
    groups = length // size
    repeats = heads // key.shape[1]
    key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)  # (B, H, T, D)

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B * groups, H, G, D)
        x = _shift(x, -(size // 2))
        return x.reshape(batch, heads, groups, size, head_dim).transpose(1, 2).reshape(-1, heads, size, head_dim)

    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, :, :size, :size].repeat_interleave(groups, dim=0)  # (B * groups, 1, G, G)
    out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=mask, dropout_p=dropout,
                                         scale=scaling, is_causal=mask is None)  # (B * groups, H, G, D)
    out = out.reshape(batch, groups, heads, size, head_dim).transpose(1, 2).reshape(batch, heads, length, head_dim)
    return _shift(out, size // 2).transpose(1, 2).contiguous(), None


def enable(model) -> None:
    """Train ``model`` (a Llama, maybe inside peft's wrapper) with S2-Attn; its sdpa attention is replaced."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if config.model_type != "llama":
        raise AlignkitError(f"--tuner_type longlora: LongLoRA's shifted sparse attention is built for Llama models "
                            f"(as in ms-swift); this model is {config.model_type}; use --tuner_type lora")
    if config._attn_implementation != "sdpa":  # e.g. ms-swift's example's --attn_impl flash_attn
        logger.info("--tuner_type longlora: attention runs as shifted sparse attention on sdpa (torch picks its flash "
                    "kernel where it can), not %s", config._attn_implementation)
    AttentionInterface.register(NAME, s2_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    base.set_attn_implementation(NAME)
    config.group_size_ratio = GROUP_SIZE_RATIO
