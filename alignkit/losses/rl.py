"""The RL arithmetic of PPO and GRPO as pure functions on tensors (torch only, no model, no config).

Shapes: N sequences, T completion tokens. ``mask`` (N, T) is 1 on a completion's tokens (up to and
including its stop token) and 0 on the right padding after it. Log-probs are of the sampled tokens.

References:
  PPO: Schulman et al. 2017, https://arxiv.org/abs/1707.06347 (Eq. 7 clipped surrogate, Eq. 11-12 GAE);
       RLHF details as in TRL's PPOTrainer, https://arxiv.org/abs/2403.17031 ("N+ implementation details").
  GAE: Schulman et al. 2015, https://arxiv.org/abs/1506.02438 (Eq. 16).
  GRPO: Shao et al. 2024, https://arxiv.org/abs/2402.03300 (Eq. 3); Dr. GRPO: Liu et al. 2025,
       https://arxiv.org/abs/2503.20783; DAPO's clip-higher: Yu et al. 2025, https://arxiv.org/abs/2503.14476.
  GSPO: Zheng et al. 2025, https://arxiv.org/abs/2507.18071 (sequence-level ratio, Eq. 7).
  CISPO: MiniMax-M1, https://arxiv.org/abs/2506.13585 (Eq. 4). SAPO: https://arxiv.org/abs/2511.20347.
  Two-sided clipping (delta): INTELLECT-2, https://arxiv.org/abs/2505.07291. RLOO: Ahmadian et al. 2024,
       https://arxiv.org/abs/2402.14740. REINFORCE++: Hu 2025, https://arxiv.org/abs/2501.03262.
  Entropy mask: Wang et al. 2025, https://arxiv.org/abs/2506.01939.
  k3 KL estimator: Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.
The GRPO family follows ms-swift's GRPOTrainer (swift/rlhf_trainers/grpo_trainer.py, swift/rl_core/advantage.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "fipo", "real")
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence", "sequence_token")
ROLLOUT_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
_LOG_RATIO_BOUND = 20.0  # exp(20) ≈ 4.9e8: ratios past it are numerical accidents (ms-swift's bound)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``); 0 where nothing is masked in."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  sum_all: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(values − mean) / sqrt(var + 1e-8) over the masked-in entries, with the unbiased variance.

    ``shift_mean=False`` adds the mean back (only the scale changes), as TRL does for rewards.
    Masked-out entries are returned as they come out of the formula; callers mask them.
    ``sum_all``: sums a tensor over the processes of a distributed run, so that mean and variance are the whole
    batch's, as on one process.
    """
    if sum_all is not None:
        mask = mask.to(values.dtype)
        total, count = sum_all(torch.stack([(values * mask).sum(), mask.sum()])).unbind()
        mean = total / count.clamp(min=1)
        squares = sum_all(((values - mean) ** 2 * mask).sum())
        count = count.clamp(min=2)
        variance = squares / count.clamp(min=1) * count / (count - 1)
        whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
        return whitened if shift_mean else whitened + mean
    mean = masked_mean(values, mask)
    count = mask.sum().clamp(min=2)
    variance = masked_mean((values - mean) ** 2, mask) * count / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float):
    """Generalised advantage estimation, backwards over the tokens of each completion.

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1},  returns R_t = A_t + V_t.
    V and A beyond a completion's last token are 0 (the episode ends there), which is why ``mask`` must
    be right-padded: 1…1 0…0. rewards, values, mask (N, T) → (advantages (N, T), returns (N, T)), 0 on padding.
    """
    mask = mask.to(rewards.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)  # (N, T)
    next_value = torch.zeros_like(rewards[:, 0])  # (N,)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


class Surrogate(NamedTuple):
    losses: torch.Tensor  # (N, T) per-token −min(ρA, clip(ρ)A)
    ratio: torch.Tensor  # (N, T) ρ = π/π_old
    clipped_low: torch.Tensor  # (N, T) bool: ρ < 1 − ε_low with A < 0 (the clip is active)
    clipped_high: torch.Tensor  # (N, T) bool: ρ > 1 + ε_high with A > 0


def clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, *, eps_low: float, eps_high: float
) -> Surrogate:
    """PPO's clipped surrogate (Eq. 7), negated to a loss, per token:

    L_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t),  ρ_t = exp(log π − log π_old).

    ε_low = ε_high = ``--cliprange`` (PPO) or ``--epsilon`` (GRPO); GRPO's ``--epsilon_high`` raises the
    upper bound (DAPO's clip-higher). With π = π_old, L_t = −A_t. logprobs, old_logprobs (N, T);
    advantages (N, T), or (N, 1) for one advantage per sequence (GRPO).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    return Surrogate(
        losses=-torch.min(unclipped, clipped),
        ratio=ratio,
        clipped_low=(ratio < 1 - eps_low) & (advantages < 0),
        clipped_high=(ratio > 1 + eps_high) & (advantages > 0),
    )


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, *, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's value loss with the value update clipped around the rollout's values, per token:

    L_t = ½·max((V_t − R_t)², (clip(V_t, V_old − c, V_old + c) − R_t)²),  c = ``--cliprange_value``.
    Returns (losses (N, T), bool (N, T) where the clipped term is the larger one).
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    return 0.5 * torch.max(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π: exp(r) − r − 1 with r = log π_ref − log π.

    Unbiased, and ≥ 0 for every sample (unlike k1 = −r). GRPO's KL term (Eq. 4 of the GRPO paper).
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def ppo_token_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLHF's per-token reward: r_t = −β·(log π − log π_ref) on every token, plus the reward model's score
    on the last token of each completion (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593, Eq. 2).

    scores (N,), logprobs, ref_logprobs, mask (N, T) → (rewards (N, T), kl (N, T) = log π − log π_ref), 0 on padding.
    Every completion must have at least one token.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(-1).long() - 1  # (N,) index of each completion's last token
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards, kl


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    *,
    scale: str,
    estimator: str = "grpo",
    sum_all: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each completion's advantage from the rewards of its prompt's group (the G = ``num_generations`` completions
    of a prompt adjacent). rewards (N,) → (advantages (N,), group std of the rewards (N,)).

    ``estimator``: grpo, A = r − mean(group) (Eq. 3 of the GRPO paper); rloo, A = r − mean of the *other* G − 1
    rewards = (r − mean(group))·G/(G − 1); reinforce_plus_plus, A = r − mean(group), then scaled by the std of
    the advantages (not of the rewards).
    ``scale``: "group" divides by the group's std (+1e-4, so a group of equal rewards gives 0, not NaN),
    "batch" by the std of all N (+1e-4), "none" not at all (Dr. GRPO). ``sum_all`` (a distributed run: sums
    over the processes) makes "batch" the std over every process, as on one process.
    """
    groups = rewards.view(-1, num_generations)  # (N/G, G)
    if num_generations == 1:  # a lone completion has nothing to compare with: advantage 0 (OPD-RL's G = 1)
        if estimator == "rloo":
            raise ValueError("rloo's leave-one-out baseline needs at least 2 completions per prompt")
        return torch.zeros_like(rewards), torch.zeros_like(rewards)
    mean = groups.mean(-1).repeat_interleave(num_generations)  # (N,)
    std = groups.std(-1).repeat_interleave(num_generations)  # (N,) unbiased, as torch.std
    advantages = rewards - mean
    if estimator == "rloo":
        advantages = advantages * num_generations / (num_generations - 1)
    elif estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ADVANTAGE_ESTIMATORS)}, got {estimator!r}")
    scaled = advantages if estimator == "reinforce_plus_plus" else rewards
    if scale == "group":
        spread = scaled.view(-1, num_generations).std(-1).repeat_interleave(num_generations)
        advantages = advantages / (spread + 1e-4)
    elif scale == "batch":
        advantages = advantages / (_batch_std(scaled, sum_all) + 1e-4)
    elif scale != "none":
        raise ValueError(f"scale must be group, batch or none, got {scale!r}")
    return advantages, std


def sequence_kl_penalty(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *,
                        reduction: str = "sum") -> torch.Tensor:
    """--kl_in_reward's per-completion KL: Σ_t (log π_old − log π_ref) over its tokens (k1, as ms-swift), or with
    ``reduction="mean"`` that sum over the number of tokens (ColossalChat's GRPO experience maker); β times it is
    subtracted from the reward before advantages. (N, T) → (N,)."""
    mask = mask.to(old_logprobs.dtype)
    total = ((old_logprobs - ref_logprobs) * mask).sum(-1)
    if reduction == "mean":
        return total / mask.sum(-1).clamp(min=1)
    if reduction != "sum":
        raise ValueError(f"reduction must be sum or mean, got {reduction!r}")
    return total


def _batch_std(values: torch.Tensor, sum_all) -> torch.Tensor:
    """The unbiased std of ``values`` (N,), or of every process's values when ``sum_all`` sums over them."""
    if sum_all is None:
        return values.std()
    total, count = sum_all(torch.stack([values.sum(), values.new_tensor(float(len(values)))])).unbind()
    squares = sum_all(((values - total / count) ** 2).sum())
    return (squares / (count - 1)).sqrt()


def weighted_reward(per_function: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Total reward: Σ_f w_f·r_f over the reward functions; a NaN (a function that returned None for a
    completion) contributes nothing. per_function (N, F), weights (F,) → (N,)."""
    return torch.nansum(per_function * weights.unsqueeze(0), dim=-1)


def importance_log_weights(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, *,
                           level: str) -> torch.Tensor:
    """log of the importance ratio π/π_old per token, (N, T), by --importance_sampling_level:

    token:          log ρ_t = log π(o_t) − log π_old(o_t);
    sequence:       GSPO's log s = mean_t log ρ_t over the completion's tokens, the same for all its tokens;
    sequence_token: GSPO-token, log π(o_t) − sg[log π(o_t)] + sg[log s]: the value of s, the gradient of
                    each token's own log π.
    """
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"level must be one of {', '.join(IMPORTANCE_SAMPLING_LEVELS)}, got {level!r}")
    mask = mask.to(log_ratio.dtype)
    sequence = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # (N, 1)
    if level == "sequence":
        return sequence.expand_as(log_ratio)
    return logprobs - logprobs.detach() + sequence.detach()


def grpo_policy_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    eps_low: float,
    eps_high: float,
    delta: float | None = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    level: str = "token",
) -> Surrogate:
    """The GRPO family's per-token policy loss (before the KL term and the reduction), ρ from
    ``importance_log_weights``; advantages (N, 1) or (N, T):

    grpo, bnpo, dr_grpo, dapo, fipo: PPO's clipped surrogate −min(ρ'A, clip(ρ, 1 − ε_low, 1 + ε_high)·A), where
        ρ' = min(ρ, δ) with --delta (two-sided clipping) and ρ' = ρ without;
    cispo: −sg[min(ρ, ε_high)]·A·log π (CISPO, Eq. 4: the ratio clipped from above and detached, so every
        token keeps a gradient; ε_high is an absolute bound here, as in ms-swift);
    sapo:  −g(ρ)·A with the soft gate g(ρ) = σ(τ(ρ − 1))·4/τ, τ = --tau_pos where A > 0 else --tau_neg.
    """
    ratio = torch.exp(importance_log_weights(logprobs, old_logprobs, mask, level=level))
    advantages = advantages.expand_as(ratio)
    if loss_type == "cispo":
        losses = -torch.clamp(ratio, max=eps_high).detach() * advantages * logprobs
        clipped_high = (ratio > eps_high) & (advantages > 0)
        return Surrogate(losses, ratio, torch.zeros_like(clipped_high), clipped_high)
    if loss_type == "sapo":
        gate_pos = torch.sigmoid(tau_pos * (ratio - 1)) * (4.0 / tau_pos)
        gate_neg = torch.sigmoid(tau_neg * (ratio - 1)) * (4.0 / tau_neg)
        losses = -torch.where(advantages > 0, gate_pos, gate_neg) * advantages
        none = torch.zeros_like(ratio, dtype=torch.bool)
        return Surrogate(losses, ratio, none, none)
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    unclipped = (torch.clamp(ratio, max=delta) if delta is not None else ratio) * advantages
    return Surrogate(
        losses=-torch.min(unclipped, clipped),
        ratio=ratio,
        clipped_low=(ratio < 1 - eps_low) & (advantages < 0),
        clipped_high=(ratio > 1 + eps_high) & (advantages > 0),
    )


def rollout_is_weights(log_ratio: torch.Tensor, mask: torch.Tensor, *, mode: str, threshold: float) -> torch.Tensor:
    """--rollout_importance_sampling_mode: weights on the per-token loss correcting for the rollout engine's
    sampler differing from the trained policy (ms-swift, after Yao et al.'s truncated importance sampling).
    ``log_ratio`` = log π_θ − log π_rollout per token (N, T); ρ = exp(log_ratio), C = ``threshold``:

    token_truncate: min(ρ_t, C);  token_mask: ρ_t where ρ_t ≤ C, else 0;
    sequence_truncate: min(ρ̄, C) on every token, ρ̄ = exp(mean_t log ρ_t) (the geometric mean);
    sequence_mask: ρ_t where ρ̄ ≤ C, else 0. Constants: no gradient flows through them."""
    if mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"mode must be one of {', '.join(ROLLOUT_IS_MODES)}, got {mode!r}")
    log_ratio = log_ratio.detach().float().clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    ratio = torch.exp(log_ratio)
    if mode == "token_truncate":
        return ratio.clamp(max=threshold)
    if mode == "token_mask":
        return torch.where(ratio <= threshold, ratio, torch.zeros_like(ratio))
    sequence = torch.exp(masked_mean(log_ratio, mask, dim=-1)).unsqueeze(-1)  # (N, 1)
    if mode == "sequence_truncate":
        return sequence.clamp(max=threshold).expand_as(ratio)
    return ratio * (sequence <= threshold).to(ratio.dtype)


def rollout_offpolicy_metrics(policy_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                              mask: torch.Tensor) -> dict[str, float]:
    """The rollout engine's gap to the trained policy on the sampled tokens (ms-swift's names): KL(π_rollout ‖ π_θ)
    by its direct and k3 estimators, both perplexities (mean over completions of exp(−mean log π)), their log
    difference and ratio, and χ² = E[ρ²] − 1 per token and per sequence (ρ̄ the geometric mean)."""
    policy_logprobs, rollout_logprobs = policy_logprobs.detach().float(), rollout_logprobs.float()
    log_ratio = (policy_logprobs - rollout_logprobs) * mask
    bounded = log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    policy_mean = masked_mean(policy_logprobs, mask, dim=-1)  # (N,)
    rollout_mean = masked_mean(rollout_logprobs, mask, dim=-1)
    log_ppl_diff = rollout_mean - policy_mean
    sequence = masked_mean(log_ratio, mask, dim=-1).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
    return {
        "rollout/kl": masked_mean(-log_ratio, mask).item(),
        "rollout/k3_kl": masked_mean((torch.exp(bounded) - bounded - 1).clamp(-10, 10), mask).item(),
        "rollout/training_ppl": torch.exp(-policy_mean).mean().item(),
        "rollout/rollout_ppl": torch.exp(-rollout_mean).mean().item(),
        "rollout/log_ppl_diff": log_ppl_diff.mean().item(),
        "rollout/ppl_ratio": torch.exp(log_ppl_diff).mean().item(),
        "rollout/chi2_token": (masked_mean(torch.exp(bounded).square(), mask) - 1).item(),
        "rollout/chi2_seq": (torch.exp(sequence).square().mean() - 1).item(),
    }


def off_policy_sequence_keep(policy_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                             advantages: torch.Tensor, mask: torch.Tensor, delta: float) -> torch.Tensor:
    """--off_policy_sequence_mask_delta δ (DeepSeek-V3.2's off-policy sequence masking): 0 for the completions whose
    mean log(π_behaviour / π_θ) exceeds δ and whose advantage is negative, 1 for the others. (N,) float."""
    drift = masked_mean(behaviour_logprobs.float() - policy_logprobs.detach().float(), mask, dim=-1)
    return ~((drift > delta) & (advantages.reshape(-1) < 0)) * 1.0


@dataclass(frozen=True)
class FipoSettings:
    decay_rate: float = 32.0  # --fipo_decay_rate: the half-life, in tokens, of a later token's influence
    clip_range: float | None = 0.2  # --fipo_clip_range
    clip_high_only: bool = True  # --fipo_clip_high_only: clip to [1, 1 + range] instead of [1 − range, 1 + range]
    safety_threshold: float | None = 4.0  # --fipo_safety_threshold


def fipo_influence(log_ratio: torch.Tensor, ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   settings: FipoSettings, *, delta: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """FIPO's per-token influence weight on the clipped surrogate (ms-swift's ``--loss_type fipo``), a constant:

    future KL  F_t = Σ_{s ≥ t} γ^{s−t} · log(π_θ/π_old)_s over the completion's tokens, γ = 2^(−1/decay_rate),
               tokens whose ratio exceeds --delta left out of the sum (dual clip);
    weight     exp(F_t) clipped to [1 − r, 1 + r] (or [1, 1 + r] with clip_high_only), r = clip_range;
    safety     where A < 0 and ρ > safety_threshold, the weight is held to [0.8, 1].

    log_ratio, ratio, mask (N, T); advantages (N, 1) or (N, T). Returns (weights (N, T), metric means)."""
    mask = mask.bool()
    steps = log_ratio.detach().float().masked_fill(~mask, 0.0)
    if delta is not None:
        steps = steps.masked_fill(ratio.detach() > delta, 0.0)
    length = steps.shape[1]
    gamma = 2.0 ** (-1.0 / settings.decay_rate)
    positions = torch.arange(length, device=steps.device)
    future = torch.zeros_like(steps)
    for start in range(0, length, 512):  # (T × 512) blocks of the decay matrix bound the memory
        later = positions[start : start + 512]
        distance = later.unsqueeze(0) - positions.unsqueeze(1)  # (T, block): s − t
        decay = torch.where(distance >= 0, gamma ** distance.clamp(min=0).float(), torch.zeros((), device=steps.device))
        future += steps[:, start : start + 512] @ decay.t()
    future = future.masked_fill(~mask, 0.0)
    weights = torch.exp(future)
    if settings.clip_range:
        low = 1.0 if settings.clip_high_only else 1 - settings.clip_range
        weights = weights.clamp(min=low, max=1 + settings.clip_range)
    safe = torch.ones_like(mask)
    if settings.safety_threshold is not None:
        safe = ~((advantages.expand_as(ratio) < 0) & (ratio.detach() > settings.safety_threshold))
        weights = torch.where(safe, weights, weights.clamp(min=0.8, max=1.0))
    return weights, {"fipo/future_kl_mean": masked_mean(future, mask).item(),
                     "fipo/influence_weight_mean": masked_mean(weights, mask).item(),
                     "fipo/safety_keep_ratio": masked_mean(safe.float(), mask).item()}


def real_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              groups: torch.Tensor, *, tau: float) -> torch.Tensor:
    """REAL's group-contrastive loss (ms-swift's ``--loss_type real``). Each completion's score is its mean token
    log-ratio S = mean_t log(π_θ/π_old); within a group (``groups``: (N,) ids) the completions with a positive
    advantage should score high and the others low:

        L_group = log(1 + Σ_neg e^{S/τ}) + log(1 + Σ_pos e^{−S/τ}),

    summed over the groups that have both kinds and divided by the number of groups in the batch (a group with
    only one kind adds 0). logprobs, old_logprobs, mask (N, T); advantages (N,) → a scalar."""
    scores = masked_mean(logprobs - old_logprobs, mask, dim=-1) / tau  # (N,)
    total, present = scores.sum() * 0.0, 0
    for group in torch.unique(groups):
        rows = groups == group
        present += 1
        positive, negative = advantages[rows] > 0, advantages[rows] <= 0
        if not positive.any() or not negative.any():
            continue
        group_scores = scores[rows]
        zero = group_scores.new_zeros(1)
        total = total + torch.logsumexp(torch.cat([group_scores[negative], zero]), dim=0)
        total = total + torch.logsumexp(torch.cat([-group_scores[positive], zero]), dim=0)
    return total / max(present, 1)


def entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, top_quantile: float) -> torch.Tensor:
    """--top_entropy_quantile q: 1 on the tokens whose entropy is at or above the (1 − q) quantile of the batch's
    completion tokens, 0 elsewhere (only those tokens carry the policy loss). (N, T) → (N, T) bool."""
    values = entropy.float().masked_fill(mask == 0, float("nan"))
    threshold = torch.nanquantile(values.flatten(), 1 - top_quantile)
    return values >= threshold


def aggregate_token_loss(losses: torch.Tensor, mask: torch.Tensor, *, loss_type: str, max_completion_length: int,
                         num_items: float | None = None):
    """Reduce GRPO's per-token losses (N, T) to a scalar, per ``--loss_type``:

    grpo, sapo:   mean over each sequence's tokens, then over sequences (the paper's 1/|o_i| normalisation);
    bnpo:         mean over all tokens of the batch;
    dr_grpo:      sum over all tokens / (N · max_completion_length), a constant, so long answers are not
                  favoured or penalised by their length (Dr. GRPO);
    dapo, cispo, fipo:  sum over the tokens / ``num_items``, the completion tokens of the whole optimizer step (all
                  micro-batches, divided by the processes, as TRL's num_items_in_batch): a token-level mean over
                  the step (DAPO's token-level loss). Without ``num_items``: the tokens of this batch.
    """
    mask = mask.to(losses.dtype)
    if loss_type in ("dapo", "cispo", "fipo"):
        normaliser = num_items if num_items is not None else mask.sum().clamp(min=1)
        return (losses * mask).sum() / normaliser
    if loss_type in ("grpo", "sapo"):
        return (masked_mean(losses, mask, dim=-1)).mean()
    if loss_type == "bnpo":
        return masked_mean(losses, mask)
    if loss_type == "dr_grpo":
        return (losses * mask).sum() / (losses.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")


def ptx_mix(policy_loss: torch.Tensor, lm_loss: torch.Tensor, ptx_coef: float) -> torch.Tensor:
    """ColossalChat's actor loss with pre-training data (InstructGPT's PPO-ptx): (1 − p)·L_PPO + p·L_LM."""
    return (1 - ptx_coef) * policy_loss + ptx_coef * lm_loss
