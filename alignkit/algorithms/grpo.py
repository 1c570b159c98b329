"""Group Relative Policy Optimization (Shao et al. 2024, https://arxiv.org/abs/2402.03300).

Per prompt, G = ``--num_generations`` completions are sampled and scored by the reward functions; each
completion's advantage is its reward relative to its group (``rl_math.group_advantages``), the same for
all its tokens (--advantage_estimator grpo, rloo or reinforce_plus_plus). The loss per token is the
--loss_type's policy loss (``rl_math.grpo_policy_losses``: PPO's clipped surrogate, CISPO, SAPO; GSPO's
sequence-level ratio with --importance_sampling_level) plus β·KL(π ‖ π_ref) (k3 estimator; with
--kl_in_reward the KL is taken off the reward instead), reduced per ``--loss_type``
(``rl_math.aggregate_token_loss``). No value model, no reward model needed. DAPO's pieces: --dynamic_sample
(groups whose rewards are all equal are replaced by fresh prompts), --overlong_filter (completions cut at
--max_completion_length carry no loss).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from alignkit.algorithms.chord import ChordSchedule, sft_loss
from alignkit.algorithms.multi_turn import RolloutInferRequest, run_multi_turn
from alignkit.algorithms.rewards import RewardFunction, reward_arguments, score_completions
from alignkit.algorithms.rollout import (
    EncodedPrompt,
    Rollout,
    batched_logprobs,
    behaviour_logprobs,
    completion_logprobs,
    decode_completions,
    make_rollout,
    reference_logprobs,
    rollout_metrics,
    trajectory_rollout,
)
from alignkit.errors import AlignkitError
from alignkit.losses import rl as rl_math
from alignkit.models.packing import Layout

logger = logging.getLogger("alignkit")


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
    advantage_estimator: str = "grpo"
    kl_in_reward: bool = False
    kl_reward_reduction: str = "sum"  # kl_in_reward: a completion's KL summed (ms-swift) or averaged (ColossalChat)
    delta: float | None = None
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    importance_sampling_level: str = "token"
    top_entropy_quantile: float = 1.0
    log_entropy: bool = False
    overlong_filter: bool = False
    dynamic_sample: bool = False
    max_resample_times: int = 3
    resample_pool: list[EncodedPrompt] | None = None  # --dynamic_sample draws replacement prompts from these
    stop_words: list[str] = field(default_factory=list)  # --stop_words: strings that end a completion
    scheduler: object = None  # --multi_turn_scheduler (multi_turn.MultiTurnScheduler): None for one turn
    max_turns: int | None = None
    chat: object = None  # multi_turn.Chat: how the scheduler's messages become tokens
    # --async_generate: completions come one step late from a server, with its log-probs of them as π_old
    off_policy_rollouts: bool = False
    # The rollout engine's own log-probs (a server, vLLM): corrections and diagnostics of its gap to the policy
    rollout_importance_sampling_mode: str | None = None
    rollout_importance_sampling_threshold: float = 2.0
    log_rollout_offpolicy_metrics: bool = False
    off_policy_sequence_mask_delta: float | None = None
    fipo: rl_math.FipoSettings = field(default_factory=rl_math.FipoSettings)  # --loss_type fipo
    # OPD-RL (ms-swift's grpo with --teacher_model): each token's advantage gains
    # teacher_kl_coef · (log π_teacher − log π_old) of the sampled token
    teacher: object = None
    teacher_kl_coef: float = 1.0
    real_tau: float = 0.5  # --loss_type real's temperature of the scores
    # CHORD (--chord_sft_dataset): (1 − μ)·loss + μ·SFT loss on one batch of expert rows per micro-batch
    chord: ChordSchedule | None = None
    chord_batches: Iterator[dict[str, torch.Tensor]] | None = None
    optimizer_step: int = 0  # set by the loop before each optimizer step (CHORD's μ reads it)

    @property
    def uses_rollout_logprobs(self) -> bool:
        return (self.rollout_importance_sampling_mode is not None or self.log_rollout_offpolicy_metrics
                or self.off_policy_sequence_mask_delta is not None)

    def trained_model(self, policy):
        return policy

    def frozen_modules(self) -> list:
        return [m for m in (self.frozen_reference, self.teacher) if m is not None]

    def load_trained(self, checkpoint) -> None:
        """Nothing beyond the policy is trained."""

    @staticmethod
    def _requests(prompts: list[EncodedPrompt], copies: int, seeds: list[int] | None, rows: slice | None):
        """The prompt of each completion to sample (a prompt's G copies adjacent) and each one's seed."""
        prompts = [p for p in prompts for _ in range(copies)]
        if seeds is not None:  # one per completion: the prompt's seed and the copy's number
            seeds = [(seed + 1_000_003 * copy) % 2**63 for seed in seeds for copy in range(copies)]
        if rows is not None:
            prompts, seeds = prompts[rows], (seeds[rows] if seeds is not None else None)
        return prompts, seeds

    def prefetch(self, prompts: list[EncodedPrompt], *, seeds: list[int] | None = None,
                 part: tuple[int, int] | None = None) -> None:
        """--async_generate: ask the generator now for what ``experience`` will sample for these prompts next."""
        prompts, seeds = self._requests(prompts, self.num_generations, seeds, self._rows(len(prompts), part))
        self.generator.prefetch([p.ids for p in prompts], seeds=seeds)

    def _rows(self, num_prompts: int, part: tuple[int, int] | None) -> slice | None:
        """This process's slice of the step's completions when every process gets the step's prompts."""
        if part is None:
            return None
        rank, processes = part
        share = num_prompts * self.num_generations // processes
        return slice(rank * share, (rank + 1) * share)

    def _sample(self, prompts: list[EncodedPrompt], copies: int, *, greedy: bool, seeds: list[int] | None = None,
                rows: slice | None = None, sum_all=None):
        """``rows``: this process's slice of the completions, when groups span processes; ``sum_all``: sums over
        processes (multi-turn: every process samples a turn while any has trajectories going)."""
        prompts, seeds = self._requests(prompts, copies, seeds, rows)
        if self.scheduler is not None:
            return self._sample_turns(prompts, greedy=greedy, seeds=seeds, sum_all=sum_all)
        ids = [p.ids for p in prompts]
        completions = self.generator(ids, greedy=greedy, seeds=seeds)
        rollout = self._rollout(ids, completions)
        engine_logprobs = getattr(completions, "logprobs", None)
        if self.off_policy_rollouts and not greedy and engine_logprobs is None:
            raise AlignkitError("--async_generate: the rollout server sent no log-probs of its samples (π_old)")
        if (self.off_policy_rollouts or self.uses_rollout_logprobs) and not greedy and engine_logprobs is not None:
            rollout.behaviour_logprobs = behaviour_logprobs(engine_logprobs, rollout.completion_mask)
        texts = decode_completions(self.tokenizer, rollout)
        token_ids = [ids[mask.bool()].tolist() for ids, mask in zip(rollout.completion_ids, rollout.completion_mask)]
        arguments = reward_arguments([p.messages for p in prompts], texts, [p.extras for p in prompts], token_ids)
        per_function = score_completions(self.reward_funcs, arguments)  # (N, F)
        total = rl_math.weighted_reward(per_function, torch.tensor(self.reward_weights))  # (N,)
        if self.missing_eos_penalty:
            total = total - self.missing_eos_penalty * (~rollout.stopped).float()
        return prompts, rollout, texts, per_function, total

    def _generate(self, ids: list[list[int]], *, greedy: bool, seeds: list[int] | None) -> Rollout:
        return self._rollout(ids, self.generator(ids, greedy=greedy, seeds=seeds))

    def _rollout(self, ids: list[list[int]], completions: list[list[int]]) -> Rollout:
        return make_rollout(ids, completions, pad_id=self.tokenizer.pad_token_id, stop_ids=self.stop_ids,
                            max_new_tokens=self.max_completion_length, stop_words=self.stop_words,
                            tokenizer=self.tokenizer)

    def _sample_turns(self, prompts: list[EncodedPrompt], *, greedy: bool, seeds: list[int] | None, sum_all=None):
        """``_sample`` with --multi_turn_scheduler: each completion is a trajectory of turns (``run_multi_turn``);
        rewards see its whole conversation as ``messages`` and its last answer as ``completions`` (ms-swift's)."""

        def sample(rows: list[int], contexts: list[list[int]], turn: int) -> list[tuple[list[int], bool]]:
            # A turn's seed: the completion's, moved on per turn, so that a trajectory draws the same turns
            # whichever others are still going.
            turn_seeds = None if seeds is None else [(seeds[i] + 7_919 * (turn - 1)) % 2**63 for i in rows]
            if not contexts:  # done here, going on elsewhere: the generator may gather prompts over processes
                self.generator([], greedy=greedy, seeds=turn_seeds)
                return []
            rollout = self._generate(contexts, greedy=greedy, seeds=turn_seeds)
            return [(ids[mask.bool()].tolist(), bool(stopped))
                    for ids, mask, stopped in zip(rollout.completion_ids, rollout.completion_mask, rollout.stopped)]

        requests = [RolloutInferRequest(messages=[dict(m) for m in p.messages], data_dict=dict(p.extras),
                                        uuid=uuid.uuid4().hex) for p in prompts]
        anyone = (lambda going: going) if sum_all is None else (
            lambda going: sum_all(torch.tensor([float(going)])).item() > 0)
        trajectories = run_multi_turn(self.scheduler, requests, sample, [p.ids for p in prompts], self.chat,
                                      self.max_turns, anyone)
        # A gym environment's reset replaced the row's prompt: the trajectory starts from its observation.
        prompts = [p if t.prompt_ids is None else dataclasses.replace(
            p, ids=t.prompt_ids, messages=t.messages[:next((k for k, m in enumerate(t.messages)
                                                            if m["role"] == "assistant"), len(t.messages))])
            for p, t in zip(prompts, trajectories)]
        rollout = trajectory_rollout([p.ids for p in prompts], trajectories, self.tokenizer.pad_token_id)
        texts = [self.tokenizer.decode(t.ids, skip_special_tokens=True) for t in trajectories]
        last = [next((m["content"] for m in reversed(t.messages) if m["role"] == "assistant"), "")
                for t in trajectories]
        extras = [{**p.extras, "rollout_infos": t.infos} for p, t in zip(prompts, trajectories)]
        arguments = reward_arguments([p.messages for p in prompts], last, extras, [t.ids for t in trajectories])
        arguments["messages"] = [t.messages for t in trajectories]
        per_function = score_completions(self.reward_funcs, arguments)  # (N, F)
        total = rl_math.weighted_reward(per_function, torch.tensor(self.reward_weights))  # (N,)
        if self.missing_eos_penalty:
            total = total - self.missing_eos_penalty * (~rollout.stopped).float()
        return prompts, rollout, texts, per_function, total

    @torch.no_grad()
    def experience(self, policy, prompts: list[EncodedPrompt], *, seeds: list[int] | None = None, sum_all=None,
                   part: tuple[int, int] | None = None):
        """Sample, score and compute advantages. Returns (tensors with leading dim N, metrics, samples).
        ``seeds``: one per prompt (see ``HFGenerator``); ``sum_all``: sums over processes (batch statistics);
        ``part``: (rank, processes) when every process gets the step's prompts and samples its slice of their
        completions (groups that span processes, as ms-swift's); rewards are then summed over the processes so
        that each group's advantage sees all of it."""
        rows = self._rows(len(prompts), part)
        prompts, rollout, texts, per_function, total = self._sample(prompts, self.num_generations, greedy=False,
                                                                    seeds=seeds, rows=rows, sum_all=sum_all)
        resampled = 0
        if self.dynamic_sample:
            (prompts, rollout, texts, per_function, total), resampled = self._dynamic_sample(
                (prompts, rollout, texts, per_function, total), seeds)
        device = next(policy.parameters()).device
        experience = {k: v.to(device) for k, v in rollout.as_dict().items()}
        if "behaviour_logprobs" in experience:
            rollout_logprobs = experience.pop("behaviour_logprobs")
            missing = torch.isnan(rollout_logprobs)
            if missing.any():  # tokens the engine gave no log-prob for: the policy's own, so no gap there
                policy_now = batched_logprobs(policy, experience, temperature=self.temperature,
                                              batch_size=self.forward_batch_size, layout=self.layout)[0]
                rollout_logprobs = torch.where(missing, policy_now.to(rollout_logprobs.dtype), rollout_logprobs)
            experience["rollout_logprobs"] = rollout_logprobs
        if self.off_policy_rollouts and self.rollout_importance_sampling_mode is None:
            # --async_generate: sampled by the weights one step back; the ratio is taken against them (with a
            # rollout correction instead, π_old stays the current policy and the correction weighs the gap)
            experience["old_logprobs"] = experience["rollout_logprobs"]
        elif self.needs_old_logprobs or self.kl_in_reward and self.beta:
            experience["old_logprobs"] = batched_logprobs(
                policy, experience, temperature=self.temperature, batch_size=self.forward_batch_size,
                layout=self.layout)[0]
        if self.beta:
            experience["ref_logprobs"] = reference_logprobs(
                policy, self.frozen_reference, experience, temperature=self.temperature,
                batch_size=self.forward_batch_size, layout=self.layout)
        rewards, metrics = total, {}
        if self.kl_in_reward and self.beta:
            kl = rl_math.sequence_kl_penalty(experience["old_logprobs"], experience["ref_logprobs"],
                                             experience["completion_mask"], reduction=self.kl_reward_reduction).cpu()
            rewards = total - self.beta * kl
            metrics["kl"] = kl.mean().item()
        if rows is None:
            advantages, group_std = rl_math.group_advantages(rewards, self.num_generations, scale=self.scale_rewards,
                                                             estimator=self.advantage_estimator, sum_all=sum_all)
        else:  # every process's rewards in one vector (zeros elsewhere, then summed), advantages of the whole step
            everyone = torch.zeros((rows.stop - rows.start) * part[1])  # (all completions of the step,)
            everyone[rows] = rewards
            everyone = sum_all(everyone) if sum_all is not None else everyone
            advantages, group_std = rl_math.group_advantages(everyone, self.num_generations, scale=self.scale_rewards,
                                                             estimator=self.advantage_estimator)
            advantages, group_std = advantages[rows], group_std[rows]
        experience["advantages"] = advantages.to(device)
        first = 0 if rows is None else rows.start  # each completion's group, numbered over the whole step
        experience["group"] = ((torch.arange(len(advantages)) + first) // self.num_generations).to(device)
        if self.teacher is not None:
            experience["advantages"], metrics["teacher_kl"] = self._teacher_advantages(policy, experience)
        metrics.update({
            "reward": total.mean().item(),
            "reward_std": total.std().item() if len(total) > 1 else 0.0,
            "frac_reward_zero_std": (group_std == 0).float().mean().item(),
            **rollout_metrics(rollout),
        })
        if self.dynamic_sample:
            metrics["dynamic_sample/resamples"] = float(resampled)
        for index, func in enumerate(self.reward_funcs):
            column = per_function[:, index]
            metrics[f"rewards/{func.name}/mean"] = column.nanmean().item()
            metrics[f"rewards/{func.name}/std"] = (
                column[~column.isnan()].std().item() if (~column.isnan()).sum() > 1 else 0.0
            )
        samples = [
            {"prompt": p.messages[-1]["content"] if p.messages else self.tokenizer.decode(p.ids), "completion": t,
             "reward": r.item(), "advantage": a.item(),
             **{f.name: v.item() for f, v in zip(self.reward_funcs, row)}}
            for p, t, r, a, row in zip(prompts, texts, total, advantages, per_function)
        ]
        return experience, metrics, samples

    def _dynamic_sample(self, sampled: tuple, seeds: list[int] | None):
        """DAPO's dynamic sampling, as ms-swift's: keep the groups whose rewards differ (std > 0); while fewer
        than the batch's groups are kept, sample fresh prompts from the training set (up to
        --max_resample_times batches). Enough kept: the batch is the first of them; else the original batch
        (with a warning). Returns (the batch, the number of batches resampled)."""
        prompts, rollout, texts, per_function, total = sampled
        groups = len(prompts) // self.num_generations
        kept: list[tuple] = []
        batch, resamples = sampled, 0
        rng = random.Random(seeds[0] if seeds else 0)
        while True:
            std = batch[4].view(-1, self.num_generations).std(-1)  # (groups,)
            kept += [(batch, g) for g in range(len(std)) if std[g] > 0]
            if len(kept) >= groups or resamples >= self.max_resample_times or not self.resample_pool:
                break
            resamples += 1
            fresh = rng.sample(self.resample_pool, min(groups, len(self.resample_pool)))
            fresh_seeds = [rng.getrandbits(63) for _ in fresh] if seeds is not None else None
            batch = self._sample(fresh, self.num_generations, greedy=False, seeds=fresh_seeds)
        if len(kept) < groups:
            logger.warning("--dynamic_sample: groups whose rewards are all equal remain after %d resample(s) "
                           "(--max_resample_times); training on the original batch", resamples)
            return sampled, resamples
        return self._concat_groups(kept[:groups]), resamples

    def _concat_groups(self, kept: list[tuple]) -> tuple:
        """(batch, group index) pairs → one batch of those groups, in order."""
        g = self.num_generations
        rows = [(batch, range(index * g, (index + 1) * g)) for batch, index in kept]
        prompts = [batch[0][i] for batch, span in rows for i in span]
        texts = [batch[2][i] for batch, span in rows for i in span]
        per_function = torch.cat([batch[3][span.start:span.stop] for batch, span in rows])
        total = torch.cat([batch[4][span.start:span.stop] for batch, span in rows])
        raw = [(batch[1], span) for batch, span in rows]
        pad_id = self.tokenizer.pad_token_id
        prompt_ids = [r.prompt_ids[i][r.prompt_mask[i].bool()].tolist() for r, span in raw for i in span]
        completions = [r.completion_ids[i][r.completion_mask[i].bool()].tolist() for r, span in raw for i in span]
        rollout = make_rollout(prompt_ids, completions, pad_id=pad_id, stop_ids=self.stop_ids,
                               max_new_tokens=self.max_completion_length)
        rollout.stopped = torch.cat([r.stopped[span.start:span.stop] for r, span in raw])  # stop words included
        return prompts, rollout, texts, per_function, total

    def loss(self, policy, batch: dict[str, torch.Tensor]):
        with_entropy = True  # the entropy metric (and --top_entropy_quantile's mask) come from the same forward
        logprobs, entropy = completion_logprobs(policy, batch, temperature=self.temperature, with_entropy=with_entropy,
                                                layout=self.layout)
        mask = batch["completion_mask"]
        if self.overlong_filter:  # completions cut at --max_completion_length carry no loss
            mask = mask * batch["stopped"].unsqueeze(-1).to(mask.dtype)
        # With one optimizer step per rollout π_old is the current policy: ratio 1, gradient −A·∇log π.
        old = batch["old_logprobs"] if "old_logprobs" in batch else logprobs.detach()
        if self.loss_type == "real":
            return self._with_chord(policy, *self._real_loss(logprobs, old, entropy, mask, batch))
        surrogate = rl_math.grpo_policy_losses(
            logprobs, old, _per_token(batch["advantages"]), mask, loss_type=self.loss_type, eps_low=self.epsilon,
            eps_high=self.epsilon_high, delta=self.delta, tau_pos=self.tau_pos, tau_neg=self.tau_neg,
            level=self.importance_sampling_level)
        per_token = surrogate.losses  # (n, C)
        metrics = {}
        if self.loss_type == "fipo":  # each token weighed by the policy's drift over the tokens after it
            weights, fipo_metrics = rl_math.fipo_influence(
                logprobs - old, surrogate.ratio, _per_token(batch["advantages"]), mask, self.fipo, delta=self.delta)
            per_token = per_token * weights
            metrics.update(fipo_metrics)
        if self.top_entropy_quantile < 1.0:
            keep = rl_math.entropy_mask(entropy, mask, self.top_entropy_quantile)
            per_token = per_token * keep
        if self.beta and not self.kl_in_reward:
            kl = rl_math.kl_k3(logprobs, batch["ref_logprobs"])  # (n, C)
            per_token = per_token + self.beta * kl
            metrics["kl"] = rl_math.masked_mean(kl, mask).item()
        if "rollout_logprobs" in batch:
            per_token = self._rollout_correction(per_token, mask, old, batch["rollout_logprobs"], metrics)
        if self.off_policy_sequence_mask_delta is not None:  # against the sampler's log-probs, else π_old's
            advantages = batch["advantages"]
            if advantages.ndim == 2:  # per token (a teacher's term): the completion's mean
                advantages = rl_math.masked_mean(advantages, mask, dim=-1)
            keep = rl_math.off_policy_sequence_keep(logprobs, batch.get("rollout_logprobs", old), advantages,
                                                    mask, self.off_policy_sequence_mask_delta)
            mask = mask * keep.unsqueeze(-1).to(mask.dtype)
            metrics["rollout/masked_sequences"] = 1 - keep.mean().item()
        loss = rl_math.aggregate_token_loss(per_token, mask, loss_type=self.loss_type,
                                            max_completion_length=self.max_completion_length,
                                            num_items=_num_items(batch))
        low = rl_math.masked_mean(surrogate.clipped_low.float(), mask).item()
        high = rl_math.masked_mean(surrogate.clipped_high.float(), mask).item()
        metrics.update({
            "loss": loss.item(),
            "entropy": rl_math.masked_mean(entropy, mask).item(),
            "clip_ratio/low_mean": low,
            "clip_ratio/high_mean": high,
            "clip_ratio/region_mean": low + high,
        })
        if self.log_entropy:
            per_completion = rl_math.masked_mean(entropy, mask, dim=-1)  # (n,)
            metrics.update({"entropy/mean": per_completion.mean().item(), "entropy/max": per_completion.max().item(),
                            "entropy/min": per_completion.min().item()})
        return self._with_chord(policy, loss, metrics)

    def _with_chord(self, policy, loss, metrics):
        """CHORD: (1 − μ)·loss + μ·the SFT loss of the next expert batch (μ at this optimizer step)."""
        if self.chord is None:
            return loss, metrics
        mu = self.chord.mu(self.optimizer_step)
        metrics["chord/mu"] = mu
        if mu <= 0:
            return loss, metrics
        expert = sft_loss(policy, next(self.chord_batches), phi=self.chord.phi)
        mixed = (1 - mu) * loss + mu * expert
        metrics.update({"chord/sft_loss": expert.item(), "chord/rl_loss": loss.item(), "loss": mixed.item()})
        return mixed, metrics

    def _real_loss(self, logprobs, old, entropy, mask, batch):
        """--loss_type real: the group-contrastive loss over the micro-batch's groups (the loop keeps groups whole),
        plus β × the token-mean k3 KL to the reference (ms-swift's)."""
        loss = rl_math.real_loss(logprobs, old, batch["advantages"], mask, batch["group"], tau=self.real_tau)
        metrics = {}
        if self.beta:
            kl = rl_math.kl_k3(logprobs, batch["ref_logprobs"])
            loss = loss + self.beta * rl_math.masked_mean(kl, mask)
            metrics["kl"] = rl_math.masked_mean(kl, mask).item()
        metrics.update({"loss": loss.item(), "entropy": rl_math.masked_mean(entropy, mask).item()})
        return loss, metrics

    def _teacher_advantages(self, policy, experience) -> tuple[torch.Tensor, float]:
        """OPD-RL's per-token advantages (ms-swift's expand_advantage_to_per_token): the completion's advantage on
        each of its tokens plus teacher_kl_coef · (log π_teacher − log π_old) of the sampled token; and the mean
        k3 estimate of KL(π_old ‖ π_teacher) over the tokens (ms-swift's teacher_kl metric)."""
        mask = experience["completion_mask"].float()
        policy_logprobs = experience.get("old_logprobs")
        if policy_logprobs is None:
            policy_logprobs = batched_logprobs(policy, experience, temperature=self.temperature,
                                               batch_size=self.forward_batch_size, layout=self.layout)[0]
        teacher_logprobs = batched_logprobs(self.teacher, experience, temperature=self.temperature,
                                            batch_size=self.forward_batch_size)[0]  # padded: any architecture
        gap = ((teacher_logprobs - policy_logprobs) * mask).float()
        advantages = experience["advantages"].unsqueeze(-1) + self.teacher_kl_coef * gap
        k3 = (torch.exp(gap) - gap - 1) * mask
        return advantages * mask, (k3.sum() / mask.sum().clamp(min=1)).item()

    def _rollout_correction(self, per_token, mask, policy_logprobs, rollout, metrics):
        """The rollout engine's gap to π_old (ms-swift): its diagnostics and, with --rollout_importance_sampling_mode,
        the importance-sampling weights on the per-token loss. Returns the per-token loss."""
        metrics.update(rl_math.rollout_offpolicy_metrics(policy_logprobs, rollout, mask))
        if self.rollout_importance_sampling_mode is None:
            return per_token
        log_ratio = policy_logprobs.detach() - rollout
        threshold = self.rollout_importance_sampling_threshold
        weights = rl_math.rollout_is_weights(log_ratio, mask, mode=self.rollout_importance_sampling_mode,
                                             threshold=threshold)
        metrics["rollout/is_weight_mean"] = rl_math.masked_mean(weights, mask).item()
        bounded = log_ratio.float().clamp(-20, 20)
        if self.rollout_importance_sampling_mode.startswith("token"):
            metrics["rollout/clipped_frac"] = rl_math.masked_mean((bounded.exp() > threshold).float(), mask).item()
        else:
            sequence = rl_math.masked_mean(bounded, mask, dim=-1).exp()
            metrics["rollout/clipped_frac"] = (sequence > threshold).float().mean().item()
        return per_token * weights

    @torch.no_grad()
    def evaluate(self, policy, prompts: list[EncodedPrompt]) -> dict[str, float]:
        """Greedy completions of held-out prompts, scored by the reward functions."""
        _, rollout, _, per_function, total = self._sample(prompts, 1, greedy=True)
        metrics = {"eval_reward": total.mean().item(),
                   **{f"eval_{k}": v for k, v in rollout_metrics(rollout).items()}}
        for index, func in enumerate(self.reward_funcs):
            metrics[f"eval_rewards/{func.name}/mean"] = per_function[:, index].nanmean().item()
        return metrics


def _num_items(batch: dict[str, torch.Tensor]) -> float | None:
    """dapo/cispo's normaliser for this micro-batch: the optimizer step's completion tokens per process (TRL's
    num_items_in_batch / processes), divided by this micro-batch's share of the step, since the loop weighs each
    micro-batch's loss by that share. None when the loop did not say (a lone batch)."""
    if "num_items_in_batch" not in batch:
        return None
    return float(batch["num_items_in_batch"]) * float(batch["micro_share"])


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages (N,) per completion, or (N, T) per token (OPD-RL), as the losses take them: (N, 1) or (N, T)."""
    return advantages if advantages.ndim == 2 else advantages.unsqueeze(-1)
