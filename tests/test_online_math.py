"""RL arithmetic of PPO and GRPO against hand computations (alignkit/losses/rl.py)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import rl as rl_math


def test_gae_matches_hand_computation_and_ignores_padding():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 5.0]])
    values = torch.tensor([[0.5, 1.0, 0.2], [1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = rl_math.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0, backwards (γλ = 0.72):
    #   δ2 = 2 − 0.2 = 1.8                     A2 = 1.8
    #   δ1 = 0 + 0.9·0.2 − 1.0 = −0.82          A1 = −0.82 + 0.72·1.8 = 0.476
    #   δ0 = 1 + 0.9·1.0 − 0.5 = 1.4            A0 = 1.4 + 0.72·0.476 = 1.74272
    # Row 1 ends after token 1 (its reward 5 and value 9 at the padding never count):
    #   δ1 = 3 − 2 = 1                          A1 = 1
    #   δ0 = 0 + 0.9·2 − 1 = 0.8                A0 = 0.8 + 0.72·1 = 1.52
    expected = torch.tensor([[1.74272, 0.476, 1.8], [1.52, 1.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values * mask)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 0.0, 4.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    advantages, returns = rl_math.gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.full((1, 4), 4.0))
    torch.testing.assert_close(advantages, 4.0 - values)


def test_clipped_surrogate_equals_minus_mean_advantage_when_policy_is_old_policy():
    torch.manual_seed(0)
    logprobs = torch.randn(3, 5)
    advantages = torch.randn(3, 5)
    out = rl_math.clipped_surrogate(logprobs, logprobs.clone(), advantages, eps_low=0.2, eps_high=0.2)
    mask = torch.ones(3, 5)
    assert rl_math.masked_mean(out.losses, mask).item() == pytest.approx(-advantages.mean().item(), abs=1e-7)
    assert not out.clipped_low.any() and not out.clipped_high.any()


def test_clipped_surrogate_hand_values():
    # ρ = 1.5 with A = +1: min(1.5, 1.2) → loss −1.2, the upper clip is active.
    # ρ = 1.5 with A = −1: min(−1.5, −1.2) = −1.5 → loss 1.5 (the pessimistic, unclipped term).
    # ρ = 0.5 with A = −1: min(−0.5, −0.8) = −0.8 → loss 0.8, the lower clip is active.
    # ρ = 1.5 with A = +1 and ε_high = 0.28: loss −1.28 (clip-higher).
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0, -1.0]])
    out = rl_math.clipped_surrogate(new, old, advantages, eps_low=0.2, eps_high=0.2)
    torch.testing.assert_close(out.losses, torch.tensor([[-1.2, 1.5, 0.8]]))
    assert out.clipped_high.tolist() == [[True, False, False]]
    assert out.clipped_low.tolist() == [[False, False, True]]
    high = rl_math.clipped_surrogate(new[:, :1], old[:, :1], advantages[:, :1], eps_low=0.2, eps_high=0.28)
    assert high.losses.item() == pytest.approx(-1.28)


def test_clipped_value_loss_hand_values():
    # V = 1 moved too far from V_old = 0 (c = 0.2): the clipped V is 0.2; with R = 2,
    # ½·max((1 − 2)², (0.2 − 2)²) = ½·3.24 = 1.62. Inside the range the plain squared error counts.
    losses, clipped = rl_math.clipped_value_loss(
        torch.tensor([[1.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]]), cliprange_value=0.2
    )
    torch.testing.assert_close(losses, torch.tensor([[1.62, 0.5 * 0.81]]))
    assert clipped.tolist() == [[True, False]]


def test_k3_kl_hand_value_and_unbiased_estimate_of_kl():
    # log π = log 0.5, log π_ref = log 0.25: r = log 0.5, k3 = 0.5 − log 0.5 − 1 = 0.193147.
    value = rl_math.kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert value.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert rl_math.kl_k3(torch.tensor([-1.3]), torch.tensor([-1.3])).item() == 0.0
    # Sampling tokens from π, the mean of k3 approaches KL(π ‖ π_ref).
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = rl_math.kl_k3(p.log()[samples], q.log()[samples]).mean().item()
    assert estimate == pytest.approx(exact, rel=0.02)


def test_ppo_token_rewards_put_score_on_last_token():
    # kl = log π − log π_ref = [0.5, 0, (padding)]; r = −0.1·kl, plus the score 1.0 on the last real token.
    rewards, kl = rl_math.ppo_token_rewards(
        torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]]),
        torch.tensor([[1, 1, 0]]), kl_coef=0.1,
    )
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 1.0, 0.0]]))


def test_group_normalisation():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # Group 1: mean 0.5, unbiased std sqrt(4·0.25 / 3) = 0.57735; group 2 has equal rewards → advantage 0.
    advantages, std = rl_math.group_advantages(rewards, 4, scale="group")
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(advantages, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(1 / 3)] * 4 + [0.0] * 4))
    plain, _ = rl_math.group_advantages(rewards, 4, scale="none")
    torch.testing.assert_close(plain, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    batch, _ = rl_math.group_advantages(rewards, 4, scale="batch")
    torch.testing.assert_close(batch, plain / (rewards.std() + 1e-4))


def test_aggregate_token_loss_variants():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # grpo: mean(mean(1, 2, 3), mean(4)) = 3; bnpo: 10 / 4 tokens; dr_grpo: 10 / (2 sequences · 5).
    assert rl_math.aggregate_token_loss(losses, mask, loss_type="grpo", max_completion_length=5).item() == 3.0
    assert rl_math.aggregate_token_loss(losses, mask, loss_type="bnpo", max_completion_length=5).item() == 2.5
    assert rl_math.aggregate_token_loss(losses, mask, loss_type="dr_grpo", max_completion_length=5).item() == 1.0


def test_ptx_mix():
    # (1 − 0.25)·2 + 0.25·6 = 3; p = 0 is plain PPO, p = 1 plain LM loss.
    assert rl_math.ptx_mix(torch.tensor(2.0), torch.tensor(6.0), 0.25).item() == 3.0
    assert rl_math.ptx_mix(torch.tensor(2.0), torch.tensor(6.0), 0.0).item() == 2.0
    assert rl_math.ptx_mix(torch.tensor(2.0), torch.tensor(6.0), 1.0).item() == 6.0


def test_masked_whiten_and_weighted_reward():
    whitened = rl_math.masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0]))
    torch.testing.assert_close(whitened[:3], torch.tensor([-1.0, 0.0, 1.0]))  # mean 2, unbiased variance 1
    scaled = rl_math.masked_whiten(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3), shift_mean=False)
    torch.testing.assert_close(scaled, torch.tensor([1.0, 2.0, 3.0]))
    # A NaN (a function that returned None) contributes nothing: [2·1, 2·0.5 + 1·2].
    total = rl_math.weighted_reward(torch.tensor([[1.0, float("nan")], [0.5, 2.0]]), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(total, torch.tensor([2.0, 3.0]))
