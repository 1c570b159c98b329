"""Supervised fine-tuning's per-token objectives, torch only.

Dynamic Fine-Tuning (DFT: Wu et al. 2025, "On the Generalization of SFT: A Reinforcement Learning Perspective
with Reward Rectification", https://arxiv.org/abs/2508.05629, Eq. 9): each token's cross-entropy weighted by the
model's own probability of that token, with the weight held constant (no gradient through it):

    L_DFT = E[ sg(p_θ(y_t | y_<t, x)) · (−log p_θ(y_t | y_<t, x)) ]

As ms-swift computes it (``--enable_dft_loss``, swift/trainers/utils.py ``per_token_loss_func``): ``loss *=
exp(-loss).detach()`` on the per-token cross-entropy, before any ``loss_scale`` weight, then summed and divided
by the number of trained tokens (the same averaging as plain cross-entropy).
"""

from __future__ import annotations

import torch


def dft_token_logps(token_logps: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs (any shape) → their DFT-weighted values ``sg(p) · log p`` (same shape), so that
    ``-sum / num_tokens`` of the result is DFT's loss where ``-sum / num_tokens`` of the input is cross-entropy.

    Example: log p = log 0.5 → 0.5 · log 0.5 ≈ −0.3466, whose gradient is 0.5 · ∂ log p (the weight is constant).
    """
    return token_logps * token_logps.detach().exp()
