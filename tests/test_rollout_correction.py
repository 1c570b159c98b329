"""GRPO's rollout corrections (ms-swift's --rollout_importance_sampling_mode, --log_rollout_offpolicy_metrics,
--off_policy_sequence_mask_delta), against values worked out by hand from ms-swift's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import rl

# Two completions: the first 3 tokens long, the second 2 (its third position is padding).
POLICY = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -7.0]])
ROLLOUT = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -2.4, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LOG_RATIO = POLICY - ROLLOUT  # [[0.5, -1, 0], [0, 1.2, -7]]


@pytest.mark.parametrize("mode, expected", [
    # ρ = e^{log ratio}: [[1.6487, 0.3679, 1], [1, 3.3201, ·]]; C = 2
    ("token_truncate", [[math.exp(0.5), math.exp(-1), 1.0], [1.0, 2.0, math.exp(-7)]]),
    ("token_mask", [[math.exp(0.5), math.exp(-1), 1.0], [1.0, 0.0, math.exp(-7)]]),
    # geometric means over the real tokens: e^{(0.5 − 1 + 0)/3} = 0.8465, e^{(0 + 1.2)/2} = 1.8221
    ("sequence_truncate", [[math.exp(-0.5 / 3)] * 3, [math.exp(0.6)] * 3]),
    ("sequence_mask", [[math.exp(0.5), math.exp(-1), 1.0], [1.0, math.exp(1.2), math.exp(-7)]]),
])
def test_importance_weights_of_each_mode(mode, expected):
    weights = rl.rollout_is_weights(LOG_RATIO, MASK, mode=mode, threshold=2.0)
    torch.testing.assert_close(weights, torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_sequence_mask_drops_a_whole_completion_past_the_threshold():
    weights = rl.rollout_is_weights(LOG_RATIO, MASK, mode="sequence_mask", threshold=1.5)  # 1.8221 > 1.5
    torch.testing.assert_close(weights[1], torch.zeros(3))
    torch.testing.assert_close(weights[0], LOG_RATIO[0].exp())


def test_weights_are_constants():
    log_ratio = LOG_RATIO.clone().requires_grad_()
    assert not rl.rollout_is_weights(log_ratio, MASK, mode="token_truncate", threshold=2.0).requires_grad


def test_offpolicy_metrics_by_hand():
    metrics = rl.rollout_offpolicy_metrics(POLICY, ROLLOUT, MASK)
    real = [0.5, -1.0, 0.0, 0.0, 1.2]  # the log ratios of the 5 real tokens
    assert metrics["rollout/kl"] == pytest.approx(-sum(real) / 5)
    assert metrics["rollout/k3_kl"] == pytest.approx(sum(math.exp(x) - x - 1 for x in real) / 5)
    assert metrics["rollout/chi2_token"] == pytest.approx(sum(math.exp(2 * x) for x in real) / 5 - 1)
    assert metrics["rollout/chi2_seq"] == pytest.approx((math.exp(2 * -0.5 / 3) + math.exp(2 * 0.6)) / 2 - 1)
    policy_means, rollout_means = [-3.5 / 3, -1.5 / 2], [-3.0 / 3, -2.7 / 2]
    assert metrics["rollout/training_ppl"] == pytest.approx(sum(math.exp(-m) for m in policy_means) / 2)
    assert metrics["rollout/rollout_ppl"] == pytest.approx(sum(math.exp(-m) for m in rollout_means) / 2)
    diffs = [r - p for r, p in zip(rollout_means, policy_means)]
    assert metrics["rollout/log_ppl_diff"] == pytest.approx(sum(diffs) / 2)
    assert metrics["rollout/ppl_ratio"] == pytest.approx(sum(math.exp(d) for d in diffs) / 2)


def test_off_policy_sequence_mask_drops_drifted_completions_with_negative_advantages():
    # mean log(π_behaviour / π_θ): first completion (−0.5 + 1 + 0)/3 = 0.1667, second (0 − 1.2)/2 = −0.6
    keep = rl.off_policy_sequence_keep(POLICY, ROLLOUT, torch.tensor([-1.0, -1.0]), MASK, delta=0.1)
    assert keep.tolist() == [0.0, 1.0]
    keep = rl.off_policy_sequence_keep(POLICY, ROLLOUT, torch.tensor([1.0, -1.0]), MASK, delta=0.1)
    assert keep.tolist() == [1.0, 1.0]  # a positive advantage is kept, however far it drifted
    assert rl.off_policy_sequence_keep(POLICY, ROLLOUT, torch.tensor([-1.0, -1.0]), MASK, delta=0.2).tolist() == \
        [1.0, 1.0]


def test_grpo_weighs_its_loss_by_the_engines_gap(tiny_model_dir):
    """The loss with token_truncate is the uncorrected loss with each token's term times min(ρ, C), ρ from the
    engine's log-probs against π_old (here the current policy: one update per rollout)."""
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt, completion_logprobs
    from alignkit.generation.vllm_server import Completions

    engine = [[-0.1, -3.0, -9.0], [-6.0, -0.5, -0.75]]

    def generator(ids, greedy, seeds):
        out = Completions([[5, 2, 9], [6, 7, 2]][i % 2] for i in range(len(ids)))
        out.logprobs = engine * (len(ids) // 2)
        return out

    def reward(completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    plain = tiny_grpo(tiny_model_dir, generator, reward, loss_type="grpo")
    corrected = tiny_grpo(tiny_model_dir, generator, reward, loss_type="grpo",
                          rollout_importance_sampling_mode="token_truncate", rollout_importance_sampling_threshold=2.0)
    experience, _, _ = corrected.experience(model, [prompt], seeds=[1])
    assert "rollout_logprobs" in experience and "old_logprobs" not in experience
    plain_experience, _, _ = plain.experience(model, [prompt], seeds=[1])
    assert "rollout_logprobs" not in plain_experience  # nothing asked for the engine's log-probs

    logprobs = completion_logprobs(model, experience, temperature=1.0)[0].detach()
    weights = torch.exp(logprobs - experience["rollout_logprobs"]).clamp(max=2.0)
    mask = experience["completion_mask"].float()
    # grpo's per-token loss with ratio 1 is −A; its reduction: per-sequence mean, then batch mean
    expected = ((-experience["advantages"].unsqueeze(-1) * weights * mask).sum(-1) / mask.sum(-1)).mean()
    loss, metrics = corrected.loss(model, experience)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert metrics["rollout/is_weight_mean"] == pytest.approx((weights * mask).sum().item() / mask.sum().item(),
                                                              rel=1e-5)
    assert "rollout/kl" in metrics


def test_fipo_weights_each_token_by_the_discounted_drift_after_it():
    # γ = 2^(−1/1) = 0.5: F = [0.1 + 0.5·0.2 + 0.25·0.3, 0.2 + 0.5·0.3, 0.3] = [0.275, 0.35, 0.3]
    log_ratio = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]])
    ratio, mask = log_ratio.exp(), torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    positive = torch.ones(2, 1)
    unclipped = rl.FipoSettings(decay_rate=1.0, clip_range=None, safety_threshold=None)
    weights, metrics = rl.fipo_influence(log_ratio, ratio, positive, mask, unclipped)
    expected = torch.tensor([[math.exp(0.275), math.exp(0.35), math.exp(0.3)], [math.exp(0.4), 1.0, 1.0]])
    torch.testing.assert_close(weights, expected)
    assert metrics["fipo/future_kl_mean"] == pytest.approx((0.275 + 0.35 + 0.3 + 0.4) / 4)
    # clipped to [1, 1.2] (high only), or [0.8, 1.2]
    high_only = rl.FipoSettings(decay_rate=1.0, clip_range=0.2, safety_threshold=None)
    torch.testing.assert_close(rl.fipo_influence(-log_ratio, ratio, positive, mask, high_only)[0][0],
                               torch.ones(3))
    both = rl.FipoSettings(decay_rate=1.0, clip_range=0.2, clip_high_only=False, safety_threshold=None)
    torch.testing.assert_close(rl.fipo_influence(-log_ratio, ratio, positive, mask, both)[0][0],
                               torch.full((3,), 0.8))  # e^-0.275, e^-0.35, e^-0.3 all below 0.8
    # --delta: a token whose ratio exceeds it leaves the sum (dual clip): the 0.3 token here
    weights, _ = rl.fipo_influence(log_ratio, ratio, positive, mask, unclipped, delta=math.exp(0.25))
    torch.testing.assert_close(weights[0], torch.tensor([math.exp(0.2), math.exp(0.2), 1.0]))
    # safety: a negative advantage with ρ above the threshold keeps its weight in [0.8, 1]
    safe = rl.FipoSettings(decay_rate=1.0, clip_range=None, safety_threshold=1.4)
    weights, metrics = rl.fipo_influence(log_ratio, ratio, -positive, mask, safe)
    torch.testing.assert_close(weights[1, 0], torch.tensor(1.0))  # ρ = e^0.4 = 1.49 > 1.4: held to ≤ 1
    torch.testing.assert_close(weights[0], expected[0])  # ρ ≤ 1.35: untouched
    assert metrics["fipo/safety_keep_ratio"] == pytest.approx(3 / 4)


def test_fipo_is_grpo_with_one_update_per_rollout(tiny_model_dir):
    """With π_old the current policy the future drift is 0, every weight 1: fipo's loss is dapo's."""
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt

    def generator(ids, greedy, seeds):
        return [[5, 2, 9], [6, 7, 2]] * (len(ids) // 2)

    def reward(completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    fipo = tiny_grpo(tiny_model_dir, generator, reward, loss_type="fipo")
    experience, _, _ = fipo.experience(model, [prompt], seeds=[1])
    loss, metrics = fipo.loss(model, experience)
    dapo_loss, _ = tiny_grpo(tiny_model_dir, generator, reward, loss_type="dapo").loss(model, experience)
    torch.testing.assert_close(loss, dapo_loss)
    assert metrics["fipo/influence_weight_mean"] == pytest.approx(1.0)


def test_a_token_without_an_engine_logprob_gets_the_policys(tiny_model_dir):
    """A stop token the engine appended without a log-prob (vLLM) has no gap: its rollout log-prob is the policy's."""
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt, completion_logprobs
    from alignkit.generation.vllm_server import Completions

    def generator(ids, greedy, seeds):
        out = Completions([[5, 2], [6, 7, 2]][i % 2] for i in range(len(ids)))
        out.logprobs = [[-0.1], [-6.0, -0.5, -0.75]] * (len(ids) // 2)  # the first lacks its stop token's
        return out

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    grpo = tiny_grpo(tiny_model_dir, generator, lambda completions, **kw: [0.0, 1.0],
                     log_rollout_offpolicy_metrics=True)
    experience, _, _ = grpo.experience(model, [prompt], seeds=[1])
    policy = completion_logprobs(model, experience, temperature=1.0)[0]
    assert experience["rollout_logprobs"][0, 0].item() == pytest.approx(-0.1)
    assert experience["rollout_logprobs"][0, 1].item() == pytest.approx(policy[0, 1].item(), abs=1e-5)
    assert not torch.isnan(experience["rollout_logprobs"]).any()


def test_real_contrasts_each_groups_scores_by_hand():
    # scores S = mean log ratio / τ (τ = 0.5): rows [0.2, -0.4] / 0.5 → 0.4, -0.8 (group 0); 0.6, 1.0 → 1.2, 2.0
    logprobs = torch.tensor([[0.2, 0.2], [-0.4, -0.4], [0.6, 0.6], [1.0, 1.0]])
    old, mask = torch.zeros(4, 2), torch.ones(4, 2)
    groups = torch.tensor([0, 0, 1, 1])
    advantages = torch.tensor([1.0, -1.0, 0.5, 0.5])  # group 1 has no negative: it adds 0
    loss = rl.real_loss(logprobs, old, advantages, mask, groups, tau=0.5)
    group0 = math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-0.4))
    assert loss.item() == pytest.approx(group0 / 2)
    assert rl.real_loss(logprobs, old, torch.ones(4), mask, groups, tau=0.5).item() == 0.0


def test_real_updates_keep_groups_whole_in_micro_batches(tiny_model_dir, tmp_path):
    """--loss_type real: the update order shuffles whole groups; a 2-step run trains; a batch that splits groups
    is refused."""
    from alignkit.cli import main
    from alignkit.training.online_loop import update_order

    order = update_order(12, seed=5, whole_groups=3)
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    for start in range(0, 12, 3):  # each run of 3 is one group, in order
        chunk = order[start : start + 3].tolist()
        assert chunk[0] % 3 == 0 and chunk == [chunk[0], chunk[0] + 1, chunk[0] + 2]

    common = ["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#8",
              "--reward_funcs", "arith_format", "--num_generations", "2", "--max_completion_length", "4",
              "--max_steps", "2", "--report_to", "none", "--dtype", "fp32", "--split_dataset_ratio", "0",
              "--eval_strategy", "no", "--loss_type", "real", "--output_dir", str(tmp_path)]
    assert main([*common, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]) == 0
    assert main([*common, "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "2"]) == 2
