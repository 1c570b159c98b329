"""Group Relative Policy Optimization (Shao et al. 2024, https://arxiv.org/abs/2402.03300).

Per prompt, G = ``--num_generations`` completions are sampled and scored by the reward functions; each
completion's advantage is its reward relative to its group (``rl_math.group_advantages``), the same for
all its tokens. The loss per token is PPO's clipped surrogate plus β·KL(π ‖ π_ref) (k3 estimator),
reduced per ``--loss_type`` (``rl_math.aggregate_token_loss``). No value model, no reward model needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.algorithms.rewards import RewardFunction, reward_arguments, score_completions
from alignkit.algorithms.rollout import (
    EncodedPrompt,
    batched_logprobs,
    completion_logprobs,
    decode_completions,
    make_rollout,
    reference_logprobs,
    rollout_metrics,
)
from alignkit.losses import rl as rl_math
from alignkit.models.packing import Layout


@dataclass
class GRPO:
    generator: object  # HFGenerator or VllmRollout: prompt ids → raw completion ids
    tokenizer: object
    stop_ids: list[int]
    reward_funcs: list[RewardFunction]
    reward_weights: list[float]
    num_generations: int
    beta: float
    epsilon: float
    epsilon_high: float
    loss_type: str
    scale_rewards: str
    temperature: float
    max_completion_length: int
    missing_eos_penalty: float | None
    forward_batch_size: int
    needs_old_logprobs: bool  # more than one optimizer step per rollout: π_old must be kept
    frozen_reference: object = None
    layout: Layout | None = None  # packed/shared-prompt log-probs (alignkit.models.packing)

    def trained_model(self, policy):
        return policy

    def frozen_modules(self) -> list:
        return [self.frozen_reference] if self.frozen_reference is not None else []

    def load_trained(self, checkpoint) -> None:
        """Nothing beyond the policy is trained."""

    def _sample(self, prompts: list[EncodedPrompt], copies: int, *, greedy: bool, seeds: list[int] | None = None):
        prompts = [p for p in prompts for _ in range(copies)]  # the G completions of a prompt are adjacent
        ids = [p.ids for p in prompts]
        if seeds is not None:  # one per completion: the prompt's seed and the copy's number
            seeds = [(seed + 1_000_003 * copy) % 2**63 for seed in seeds for copy in range(copies)]
        rollout = make_rollout(ids, self.generator(ids, greedy=greedy, seeds=seeds), pad_id=self.tokenizer.pad_token_id,
                               stop_ids=self.stop_ids, max_new_tokens=self.max_completion_length)
        texts = decode_completions(self.tokenizer, rollout)
        arguments = reward_arguments([p.messages for p in prompts], texts, [p.extras for p in prompts])
        per_function = score_completions(self.reward_funcs, arguments)  # (N, F)
        total = rl_math.weighted_reward(per_function, torch.tensor(self.reward_weights))  # (N,)
        if self.missing_eos_penalty:
            total = total - self.missing_eos_penalty * (~rollout.stopped).float()
        return prompts, rollout, texts, per_function, total

    @torch.no_grad()
    def experience(self, policy, prompts: list[EncodedPrompt], *, seeds: list[int] | None = None, sum_all=None):
        """Sample, score and compute advantages. Returns (tensors with leading dim N, metrics, samples).
        ``seeds``: one per prompt (see ``HFGenerator``); ``sum_all``: sums over processes (batch statistics)."""
        prompts, rollout, texts, per_function, total = self._sample(prompts, self.num_generations, greedy=False,
                                                                    seeds=seeds)
        advantages, group_std = rl_math.group_advantages(total, self.num_generations, scale=self.scale_rewards,
                                                         sum_all=sum_all)
        device = next(policy.parameters()).device
        experience = {k: v.to(device) for k, v in rollout.as_dict().items()}
        experience["advantages"] = advantages.to(device)
        if self.needs_old_logprobs:
            experience["old_logprobs"] = batched_logprobs(
                policy, experience, temperature=self.temperature, batch_size=self.forward_batch_size,
                layout=self.layout)[0]
        if self.beta:
            experience["ref_logprobs"] = reference_logprobs(
                policy, self.frozen_reference, experience, temperature=self.temperature,
                batch_size=self.forward_batch_size, layout=self.layout)
        metrics = {
            "reward": total.mean().item(),
            "reward_std": total.std().item() if len(total) > 1 else 0.0,
            "frac_reward_zero_std": (group_std == 0).float().mean().item(),
            **rollout_metrics(rollout),
        }
        for index, func in enumerate(self.reward_funcs):
            column = per_function[:, index]
            metrics[f"rewards/{func.name}/mean"] = column.nanmean().item()
            metrics[f"rewards/{func.name}/std"] = (
                column[~column.isnan()].std().item() if (~column.isnan()).sum() > 1 else 0.0
            )
        samples = [
            {"prompt": p.messages[-1]["content"], "completion": t, "reward": r.item(), "advantage": a.item(),
             **{f.name: v.item() for f, v in zip(self.reward_funcs, row)}}
            for p, t, r, a, row in zip(prompts, texts, total, advantages, per_function)
        ]
        return experience, metrics, samples

    def loss(self, policy, batch: dict[str, torch.Tensor]):
        logprobs, entropy = completion_logprobs(policy, batch, temperature=self.temperature, with_entropy=True,
                                                layout=self.layout)
        mask = batch["completion_mask"]
        # With one optimizer step per rollout π_old is the current policy: ratio 1, gradient −A·∇log π.
        old = batch["old_logprobs"] if "old_logprobs" in batch else logprobs.detach()
        surrogate = rl_math.clipped_surrogate(logprobs, old, batch["advantages"].unsqueeze(-1),
                                              eps_low=self.epsilon, eps_high=self.epsilon_high)
        per_token = surrogate.losses  # (n, C)
        metrics = {}
        if self.beta:
            kl = rl_math.kl_k3(logprobs, batch["ref_logprobs"])  # (n, C)
            per_token = per_token + self.beta * kl
            metrics["kl"] = rl_math.masked_mean(kl, mask).item()
        loss = rl_math.aggregate_token_loss(per_token, mask, loss_type=self.loss_type,
                                            max_completion_length=self.max_completion_length)
        low = rl_math.masked_mean(surrogate.clipped_low.float(), mask).item()
        high = rl_math.masked_mean(surrogate.clipped_high.float(), mask).item()
        metrics.update({
            "loss": loss.item(),
            "entropy": rl_math.masked_mean(entropy, mask).item(),
            "clip_ratio/low_mean": low,
            "clip_ratio/high_mean": high,
            "clip_ratio/region_mean": low + high,
        })
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, policy, prompts: list[EncodedPrompt]) -> dict[str, float]:
        """Greedy completions of held-out prompts, scored by the reward functions."""
        _, rollout, _, per_function, total = self._sample(prompts, 1, greedy=True)
        metrics = {"eval_reward": total.mean().item(),
                   **{f"eval_{k}": v for k, v in rollout_metrics(rollout).items()}}
        for index, func in enumerate(self.reward_funcs):
            metrics[f"eval_rewards/{func.name}/mean"] = per_function[:, index].nanmean().item()
        return metrics
