"""PPO for RLHF (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155), as TRL's PPOTrainer and ms-swift run it.

Four models: the policy (trained), the reference (frozen; the LoRA-disabled policy by default), the
reward model (frozen, scores whole answers) and the value model (trained; starts as the reward model, or as
--value_model). Instead of a reward model, verifiable reward functions may score the answers (ColossalChat's
``--no_neural_reward_model --reward_functions``): Σ_f w_f·r_f, as GRPO totals them.
A rollout samples one completion per prompt and turns the reward model's score into per-token rewards
with a KL penalty (``rl_math.ppo_token_rewards``), then advantages by GAE (``rl_math.gae``), whitened.
The loss per mini-batch is the clipped surrogate plus ``vf_coef`` times the clipped value loss; with
``--pretrain_dataset`` the policy part is mixed with an LM loss, (1 − p)·PPO + p·LM (ColossalChat's ptx).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.algorithms.rewards import reward_arguments, score_completions
from alignkit.algorithms.rollout import (
    EncodedPrompt,
    as_packable_batch,
    batched_logprobs,
    completion_logprobs,
    decode_completions,
    make_rollout,
    reference_logprobs,
    rollout_metrics,
    sequence_inputs,
)
from alignkit.algorithms.sft import SFT
from alignkit.losses import rl as rl_math
from alignkit.models.packing import Layout, pack, supports_packing
from alignkit.models.scalar_model import TokenScalarModel, score_conversations, score_token_ids


def completion_values(value_model: TokenScalarModel, experience: dict[str, torch.Tensor],
                      layout: Layout | None = None) -> torch.Tensor:
    """V(s_t) for each completion token t: the value at the position just before it. → (N, C).

    With a packed ``layout`` the sequences run as the policy's do (no padding; with prefix sharing the
    common system prompt once): the same values on the completion tokens, 0 on padding, which every use masks.
    """
    if layout is not None and layout.padding_free and supports_packing(value_model.backbone):
        packed = pack(as_packable_batch(experience), share_prefixes=layout.prefix_sharing)
        # The kept positions are those that predict a completion token: exactly the states V is read at.
        per_token = value_model.packed_values(packed)[packed.target_rows]  # (M,)
        mask = experience["completion_mask"].bool()  # (N, C); targets come in its row-major order
        return per_token.new_zeros(mask.shape).masked_scatter(mask, per_token)
    input_ids, attention_mask, position_ids = sequence_inputs(experience)
    prompt_length = experience["prompt_ids"].shape[1]
    values = value_model(input_ids, attention_mask, position_ids)  # (N, P + C)
    return values[:, prompt_length - 1 : -1]


@dataclass
class PretrainBatches:
    """ptx data: SFT rows, cycled in a seeded order, ``batch_size`` rows per micro-batch."""

    rows: list  # (row_id, Encoded)
    collate: object
    batch_size: int
    seed: int
    position: int = 0
    order: list[int] = field(default_factory=list)

    def next(self):
        if not self.order or self.position >= len(self.order):
            epoch = self.position // max(len(self.rows), 1)
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self.order = torch.randperm(len(self.rows), generator=generator).tolist()
            self.position = 0
        picked = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.collate([self.rows[i] for i in picked])


@dataclass
class PPO:
    generator: object
    tokenizer: object
    stop_ids: list[int]
    reward_model: TokenScalarModel | None  # None: reward_funcs score the completions
    reward_encoder: object  # ChatEncoder of the reward model's tokenizer (None without a reward model)
    value_model: TokenScalarModel
    kl_coef: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    gamma: float
    lam: float
    whiten_rewards: bool
    temperature: float
    max_completion_length: int
    missing_eos_penalty: float | None
    forward_batch_size: int
    frozen_reference: object = None
    layout: Layout | None = None  # packed/shared-prompt log-probs (alignkit.models.packing)
    ptx_coef: float = 0.0
    pretrain: PretrainBatches | None = None
    stop_words: list[str] = field(default_factory=list)  # --stop_words: strings that end a completion
    reward_funcs: list = field(default_factory=list)  # RewardFunction: verifiable rewards instead of a reward model
    reward_weights: list[float] = field(default_factory=list)

    def trained_model(self, policy) -> PolicyAndValue:
        """The policy and the value model as one module, so that one forward (and the sharding engine's
        wrapper around it) serves both."""
        return PolicyAndValue(policy, self.value_model)

    def frozen_modules(self) -> list:
        models = [self.reward_model, self.frozen_reference]
        return [model for model in models if model is not None]

    def _sample(self, prompts: list[EncodedPrompt], *, greedy: bool, seeds: list[int] | None = None):
        ids = [p.ids for p in prompts]
        rollout = make_rollout(ids, self.generator(ids, greedy=greedy, seeds=seeds), pad_id=self.tokenizer.pad_token_id,
                               stop_ids=self.stop_ids, max_new_tokens=self.max_completion_length,
                               stop_words=self.stop_words, tokenizer=self.tokenizer)
        texts = decode_completions(self.tokenizer, rollout)
        packed = self.layout is not None and self.layout.padding_free
        if self.reward_funcs:
            token_ids = [ids[mask.bool()].tolist()
                         for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)]
            arguments = reward_arguments([p.messages for p in prompts], texts, [p.extras for p in prompts], token_ids)
            scores = rl_math.weighted_reward(score_completions(self.reward_funcs, arguments),
                                             torch.tensor(self.reward_weights))  # (N,)
        elif prompts and prompts[0].messages is None:  # token-id prompts: prompt + completion ids, as ColossalChat
            sequences = [p.ids + ids[mask.bool()].tolist()
                         for p, ids, mask in zip(prompts, rollout.completion_ids, rollout.completion_mask)]
            scores = score_token_ids(self.reward_model, sequences, pad_id=self.reward_encoder.tokenizer.pad_token_id,
                                     batch_size=self.forward_batch_size, packed=packed)  # (N,)
        else:
            conversations = [[*p.messages, {"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
            scores = score_conversations(self.reward_model, self.reward_encoder, conversations,
                                         batch_size=self.forward_batch_size, packed=packed)  # (N,)
        if self.missing_eos_penalty:
            scores = scores - self.missing_eos_penalty * (~rollout.stopped).float()
        return rollout, texts, scores

    @torch.no_grad()
    def experience(self, policy, prompts: list[EncodedPrompt], *, seeds: list[int] | None = None, sum_all=None):
        """Sample, score, and turn scores into per-token advantages. ``seeds``: one per prompt (see
        ``HFGenerator``); ``sum_all``: sums over processes, so whitening uses the whole batch's statistics."""
        rollout, texts, scores = self._sample(prompts, greedy=False, seeds=seeds)
        device = next(policy.parameters()).device
        experience = {k: v.to(device) for k, v in rollout.as_dict().items()}
        mask = experience["completion_mask"]
        logprobs, entropy = batched_logprobs(policy, experience, temperature=self.temperature,
                                             batch_size=self.forward_batch_size, with_entropy=True, layout=self.layout)
        ref = reference_logprobs(policy, self.frozen_reference, experience, temperature=self.temperature,
                                 batch_size=self.forward_batch_size, layout=self.layout)
        values = torch.cat([
            completion_values(self.value_model, {k: v[s : s + self.forward_batch_size] for k, v in experience.items()},
                              self.layout)
            for s in range(0, len(mask), self.forward_batch_size)
        ])  # (N, C)
        scores = scores.to(device)
        rewards, kl = rl_math.ppo_token_rewards(scores, logprobs, ref, mask, kl_coef=self.kl_coef)
        if self.whiten_rewards:
            rewards = rl_math.masked_whiten(rewards, mask, shift_mean=False, sum_all=sum_all) * mask
        advantages, returns = rl_math.gae(rewards, values, mask, gamma=self.gamma, lam=self.lam)
        advantages = rl_math.masked_whiten(advantages, mask, sum_all=sum_all) * mask
        experience.update(old_logprobs=logprobs, old_values=values * mask, advantages=advantages, returns=returns)

        kl_sum = kl.sum(-1)  # (N,) sequence KL estimate, Σ_t log π − log π_ref
        metrics = {
            "reward": scores.mean().item(),
            "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            "objective/scores": scores.mean().item(),
            "objective/kl": kl_sum.mean().item(),
            "objective/entropy": (entropy * mask).sum(-1).mean().item(),
            "objective/non_score_reward": (-self.kl_coef * kl_sum).mean().item(),
            "objective/rlhf_reward": (scores - self.kl_coef * kl_sum).mean().item(),
            **rollout_metrics(rollout),
        }
        samples = [{"prompt": p.messages[-1]["content"] if p.messages else self.tokenizer.decode(p.ids),
                    "completion": t, "score": s.item()}
                   for p, t, s in zip(prompts, texts, scores)]
        return experience, metrics, samples

    def loss(self, model: PolicyAndValue, batch: dict[str, torch.Tensor]):
        """``model``: ``trained_model(policy)``, or the sharding engine's wrapper around it."""
        mask = batch["completion_mask"]
        pretrain_batch = self.pretrain.next() if self.pretrain is not None else None
        logprobs, entropy, values, lm_loss = model(batch, temperature=self.temperature, layout=self.layout,
                                                   pretrain_batch=pretrain_batch)
        surrogate = rl_math.clipped_surrogate(logprobs, batch["old_logprobs"], batch["advantages"],
                                              eps_low=self.cliprange, eps_high=self.cliprange)
        policy_loss = rl_math.masked_mean(surrogate.losses, mask)
        value_losses, value_clipped = rl_math.clipped_value_loss(
            values, batch["old_values"], batch["returns"], cliprange_value=self.cliprange_value)
        value_loss = rl_math.masked_mean(value_losses, mask)
        metrics = {}
        actor_loss = policy_loss
        if lm_loss is not None:
            actor_loss = rl_math.ptx_mix(policy_loss, lm_loss, self.ptx_coef)
            metrics["loss/ptx_avg"] = lm_loss.item()
        loss = actor_loss + self.vf_coef * value_loss
        log_ratio = logprobs.detach() - batch["old_logprobs"]
        metrics.update(
            {
                "loss": loss.item(),
                "loss/policy_avg": policy_loss.item(),
                "loss/value_avg": value_loss.item(),
                "policy/clipfrac_avg": rl_math.masked_mean(
                    (surrogate.clipped_low | surrogate.clipped_high).float(), mask
                ).item(),
                "policy/approxkl_avg": rl_math.masked_mean(0.5 * log_ratio**2, mask).item(),
                "policy/entropy_avg": rl_math.masked_mean(entropy, mask).item(),
                "val/clipfrac_avg": rl_math.masked_mean(value_clipped.float(), mask).item(),
                "val/ratio": rl_math.masked_mean(surrogate.ratio.detach(), mask).item(),
            }
        )
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, policy, prompts: list[EncodedPrompt]) -> dict[str, float]:
        """Greedy completions of held-out prompts, scored by the reward model (or functions)."""
        rollout, _, scores = self._sample(prompts, greedy=True)
        return {"eval_score": scores.mean().item(), **{f"eval_{k}": v for k, v in rollout_metrics(rollout).items()}}

    def load_trained(self, checkpoint: Path) -> None:
        """Resume the value model (the policy's weights are the checkpoint's own)."""
        self.value_model.load_trained(Path(checkpoint) / "value_model")


class PolicyAndValue(torch.nn.Module):
    """PPO's trained model: one forward runs the policy's log-probs, the value model's values and the ptx LM
    loss, so DDP (or DeepSpeed, FSDP) wraps one module and sees one forward per backward (as TRL's
    PolicyAndValueWrapper). A checkpoint holds the policy, and the value model in ``value_model/``."""

    def __init__(self, policy, value_model: TokenScalarModel):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, batch: dict[str, torch.Tensor], *, temperature: float, layout: Layout | None,
                pretrain_batch=None):
        """→ (log-probs (n, C), entropy (n, C), values (n, C), LM loss on ``pretrain_batch`` or None)."""
        logprobs, entropy = completion_logprobs(self.policy, batch, temperature=temperature, with_entropy=True,
                                                layout=layout)
        values = completion_values(self.value_model, batch, layout)
        lm_loss = None
        if pretrain_batch is not None:
            lm_loss, _ = SFT().loss(self.policy, pretrain_batch.to(logprobs.device))
        return logprobs, entropy, values, lm_loss

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        self.policy.save_pretrained(directory, safe_serialization=safe_serialization)
        (Path(directory) / "value_model").mkdir(exist_ok=True)
        self.value_model.save_pretrained(Path(directory) / "value_model", safe_serialization=safe_serialization)
