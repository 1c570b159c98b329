"""The one place that turns a model forward into per-sequence log-probabilities of the labelled tokens."""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignkit.data.collate import Batch
from alignkit.data.template import IGNORE_INDEX


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits).gather(-1, index)`` without materialising the (N, T, V) log-softmax.

    logits (N, T, V), index (N, T) → (N, T) in fp32. Computed row by row to bound peak memory.
    """
    rows = []
    for row_logits, row_index in zip(logits, index):  # (T, V), (T,)
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def length_desensitised_weights(mask: torch.Tensor, ld_alpha: float) -> torch.Tensor:
    """Per-token weights of LD-DPO (https://arxiv.org/abs/2409.06411, Eq. 9) for a pair batch.

    ``mask`` (2B, T) marks completion tokens, chosen rows first, rejected rows second. Token k of a
    completion (1-based) weighs 1 while k ≤ l_p = min(|y_w|, |y_l|), the pair's shared length, and
    ``ld_alpha`` beyond it; 0 off the completion. Policy and reference use the same weights (as TRL 1.x).
    Example: |y_w| = 2, |y_l| = 4, α = 0.5 → chosen [1, 1], rejected [1, 1, 0.5, 0.5].
    """
    if mask.shape[0] % 2:
        raise ValueError("ld_alpha needs a pair batch: chosen rows then rejected rows")
    position = mask.long().cumsum(-1)  # (2B, T) 1-based index within the completion
    chosen_lengths, rejected_lengths = mask.sum(-1).chunk(2)  # (B,), (B,)
    shared = torch.minimum(chosen_lengths, rejected_lengths).repeat(2)  # (2B,) l_p
    weights = torch.where(position <= shared.unsqueeze(-1), 1.0, ld_alpha)  # (2B, T)
    return weights * mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False,
                   ld_alpha: float | None = None, per_token: Callable | None = None,
                   loss_scale: torch.Tensor | None = None):
    """Sum (or mean) of log p(label_t | tokens_<t) over labelled positions.

    logits (N, T, V) predict the *next* token, labels (N, T) with -100 where untrained.
    Returns (logps (N,), token counts (N,)). Equivalent to the naive
    ``(log_softmax(logits[:, :-1]).gather(-1, labels[:, 1:]) * mask).sum(-1)``.
    ``ld_alpha`` (LD-DPO) weighs each pair's tokens beyond the shorter completion's length by α
    (see ``length_desensitised_weights``; N = 2B, chosen rows first); ``loss_scale`` (N, T), aligned with
    ``labels``, weighs each labelled token (--loss_scale hermes, ...); counts stay unweighted.
    ``per_token`` maps the per-token log-probs before they are weighed (SFT's DFT: ``alignkit.losses.sft``).
    """
    logits, labels = logits[:, :-1], labels[:, 1:]  # (N, T-1, V), (N, T-1)
    mask = labels != IGNORE_INDEX
    weights = mask if ld_alpha is None else length_desensitised_weights(mask, ld_alpha)  # (N, T-1)
    if loss_scale is not None:
        weights = weights * loss_scale[:, 1:]
    token_logps = selective_log_softmax(logits, labels.masked_fill(~mask, 0))  # (N, T-1)
    if per_token is not None:
        token_logps = per_token(token_logps)
    token_logps = token_logps * weights
    counts = mask.sum(-1)
    total = token_logps.sum(-1)
    return (total / counts.clamp(min=1) if average else total), counts


def forward_logps(model, batch: Batch, *, average: bool = False, ld_alpha: float | None = None,
                  per_token: Callable | None = None):
    """Run the model and return (logps (N,), token counts (N,)); ``average``, ``ld_alpha`` and ``per_token`` as in
    ``sequence_logps``.

    Only the positions that predict a labelled token need the LM head: with prompts much longer than
    answers this skips most of the (N, T, V) logits. ``logits_to_keep`` keeps the last k positions.
    """
    trained = batch.labels != IGNORE_INDEX  # (N, T)
    first = int(trained.float().argmax(-1).min()) if trained.any() else 1
    keep = batch.input_ids.shape[1] - max(first - 1, 0)
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep, use_cache=False,
        **(batch.model_inputs or {}),
    ).logits  # (N, keep, V)
    scale = None if batch.loss_scale is None else batch.loss_scale[:, -keep:]
    return sequence_logps(logits, batch.labels[:, -keep:], average=average, ld_alpha=ld_alpha, per_token=per_token,
                          loss_scale=scale)
