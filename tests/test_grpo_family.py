"""ms-swift's GRPO family as pure functions: every --loss_type against hand values and TRL's GRPOTrainer,
GSPO's sequence-level ratio, the advantage estimators, the entropy mask; and ms-swift's batch accounting."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignkit.errors import AlignkitError
from alignkit.losses import rl
from alignkit.training.generation_batch import generation_batch

# Two completions of 3 tokens, the second padded after 2; a ratio of e^0.5 on token 1 of the first.
LOGPROBS = torch.tensor([[-1.0, -0.5, -2.0], [-1.0, -1.0, -3.0]])
OLD = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -1.0, -9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([[1.0], [-2.0]])


def family(loss_type, **kwargs):
    settings = dict(loss_type=loss_type, eps_low=0.2, eps_high=0.28)
    settings.update(kwargs)
    return rl.grpo_policy_losses(LOGPROBS, OLD, ADV, MASK, **settings)


def test_clipped_surrogate_with_clip_higher_by_hand():
    out = family("grpo").losses
    # Row 0: ratios 1, e^0.5 = 1.6487 (clipped to 1.28 for A = 1 > 0), 1 → −1, −1.28, −1.
    # Row 1: ratio e^−0.5 = 0.6065 with A = −2: min(−1.2131, 0.8·−2 = −1.6) = −1.6 → loss 1.6; then 1·−2 → 2.
    assert out[0].tolist() == pytest.approx([-1.0, -1.28, -1.0])
    assert out[1, :2].tolist() == pytest.approx([1.6, 2.0])


def test_delta_caps_the_unclipped_ratio():
    # A negative advantage with a large ratio: without delta the loss is ρ·|A| (unbounded); with delta, δ·|A|.
    logprobs, old = torch.tensor([[0.0]]), torch.tensor([[-2.0]])  # ρ = e² = 7.389
    plain = rl.grpo_policy_losses(logprobs, old, torch.tensor([[-1.0]]), torch.ones(1, 1), loss_type="grpo",
                                  eps_low=0.2, eps_high=0.2).losses
    capped = rl.grpo_policy_losses(logprobs, old, torch.tensor([[-1.0]]), torch.ones(1, 1), loss_type="grpo",
                                   eps_low=0.2, eps_high=0.2, delta=1.5).losses
    assert plain.item() == pytest.approx(math.exp(2))
    assert capped.item() == pytest.approx(1.5)


def test_cispo_detaches_the_clipped_ratio_and_keeps_every_gradient():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    out = rl.grpo_policy_losses(logprobs, OLD, ADV, MASK, loss_type="cispo", eps_low=0.2, eps_high=1.5)
    # Row 0 token 1: min(e^0.5, 1.5) = 1.5 → −1.5·1·(−0.5) = 0.75; token 0: −1·1·(−1) = 1.
    assert out.losses[0, :2].tolist() == pytest.approx([1.0, 0.75])
    out.losses[0, :2].sum().backward()
    # d/dlogπ of −sg[min(ρ, 1.5)]·A·logπ: −1.5 on token 1 though its ratio is past the bound (the token keeps its
    # gradient), −1 on token 0 (ρ = 1; no gradient through the ratio, which would make it −ρ(1 + log π)·A = 0).
    assert logprobs.grad[0, :2].tolist() == pytest.approx([-1.0, -1.5])


def test_sapo_soft_gate_by_hand():
    out = family("sapo", tau_pos=1.0, tau_neg=1.05).losses
    ratio = math.exp(0.5)
    gate_pos = 1 / (1 + math.exp(-(ratio - 1))) * 4
    assert out[0, 1].item() == pytest.approx(-gate_pos)
    assert out[0, 0].item() == pytest.approx(-2.0)  # σ(0)·4/τ = 2 at ratio 1, A = 1
    gate_neg = 1 / (1 + math.exp(-1.05 * (math.exp(-0.5) - 1))) * 4 / 1.05
    assert out[1, 0].item() == pytest.approx(2 * gate_neg)


def test_gspo_sequence_ratio_is_the_geometric_mean_over_the_completion():
    weights = rl.importance_log_weights(LOGPROBS, OLD, MASK, level="sequence")
    # Row 0: (0 + 0.5 + 0)/3; row 1: (−0.5 + 0)/2 (the padded token's −9 → −3 jump is ignored).
    assert weights[0].tolist() == pytest.approx([0.5 / 3] * 3)
    assert weights[1].tolist() == pytest.approx([-0.25] * 3)
    logprobs = LOGPROBS.clone().requires_grad_(True)
    token_level = rl.importance_log_weights(logprobs, OLD, MASK, level="sequence_token")
    assert token_level.detach()[0].tolist() == pytest.approx([0.5 / 3] * 3)  # the sequence's value ...
    token_level[0, 1].backward()
    assert logprobs.grad[0].tolist() == [0.0, 1.0, 0.0]  # ... and the token's own gradient


def test_dapo_and_cispo_normalise_by_the_step_tokens():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    assert rl.aggregate_token_loss(losses, MASK, loss_type="dapo", max_completion_length=8).item() == pytest.approx(3.0)
    assert rl.aggregate_token_loss(losses, MASK, loss_type="cispo", max_completion_length=8,
                                   num_items=10.0).item() == pytest.approx(1.5)
    assert rl.aggregate_token_loss(losses, MASK, loss_type="sapo", max_completion_length=8).item() == pytest.approx(
        (2.0 + 4.5) / 2)


def test_advantage_estimators_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])  # two groups of 3
    grpo, _ = rl.group_advantages(rewards, 3, scale="none")
    rloo, _ = rl.group_advantages(rewards, 3, scale="none", estimator="rloo")
    # RLOO: r − mean of the other two. Group 1: 1 − 0 = 1, 0 − 0.5 = −0.5.
    assert rloo.tolist() == pytest.approx([1.0, -0.5, -0.5, -1.5, 0.0, 1.5])
    assert rloo.tolist() == pytest.approx((grpo * 1.5).tolist())
    rpp, _ = rl.group_advantages(rewards, 3, scale="batch", estimator="reinforce_plus_plus")
    centred = grpo
    assert rpp.tolist() == pytest.approx((centred / (centred.std() + 1e-4)).tolist())  # the advantages' std
    batch, _ = rl.group_advantages(rewards, 3, scale="batch")
    assert batch.tolist() == pytest.approx((centred / (rewards.std() + 1e-4)).tolist())  # the rewards' std


def test_kl_in_reward_sums_the_k1_kl_over_the_completion():
    kl = rl.sequence_kl_penalty(OLD, LOGPROBS, MASK)
    assert kl.tolist() == pytest.approx([-0.5, 0.5])


def test_entropy_mask_keeps_the_top_quantile_of_completion_tokens():
    entropy = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 100.0]])  # the padded 100 is not a token
    keep = rl.entropy_mask(entropy, MASK, 0.4)
    assert keep.tolist() == [[False, True, False], [True, False, False]]


# --- parity with TRL's GRPOTrainer._compute_loss (TRL has grpo, bnpo, dr_grpo, dapo, cispo, sapo, delta, GSPO)


def trl_loss(loss_type, *, level="token", delta=None, beta=0.04, num_items=None):
    from trl import GRPOTrainer

    ref = torch.tensor([[-1.2, -0.7, -1.5], [-0.9, -1.3, -2.0]])
    accelerator = SimpleNamespace(num_processes=1, gather=lambda t: t, gather_for_metrics=lambda t: t,
                                  reduce=lambda t, reduction="sum": t, sync_gradients=True)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (LOGPROBS, torch.zeros_like(LOGPROBS), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=delta, sapo_temperature_pos=1.0,
                             sapo_temperature_neg=1.05, steps_per_generation=1),
        use_vllm=False, model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=8, _entropy_bonus_enabled=False, accelerator=accelerator,
        _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"prompt_ids": torch.ones(2, 1, dtype=torch.long), "prompt_mask": torch.ones(2, 1, dtype=torch.long),
              "completion_ids": torch.ones(2, 3, dtype=torch.long), "completion_mask": MASK,
              "advantages": ADV.squeeze(-1), "old_per_token_logps": OLD, "ref_per_token_logps": ref,
              "num_items_in_batch": torch.tensor(float(num_items or MASK.sum()))}
    trl_value = GRPOTrainer._compute_loss(fake, None, inputs).item()
    ours = rl.grpo_policy_losses(LOGPROBS, OLD, ADV, MASK, loss_type=loss_type, eps_low=0.2, eps_high=0.28,
                                 delta=delta, level=level).losses + beta * rl.kl_k3(LOGPROBS, ref)
    mine = rl.aggregate_token_loss(ours, MASK, loss_type=loss_type, max_completion_length=8, num_items=num_items)
    return trl_value, mine.item()


@pytest.mark.parametrize("loss_type", [t for t in rl.GRPO_LOSS_TYPES if t not in ("fipo", "real")])
def test_every_loss_type_matches_trl(loss_type):  # fipo, real: ms-swift's only, pinned to hand values elsewhere
    trl_value, ours = trl_loss(loss_type)
    assert ours == pytest.approx(trl_value, rel=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "sapo"])
def test_gspo_and_delta_match_trl(loss_type):
    assert trl_loss(loss_type, level="sequence")[1] == pytest.approx(trl_loss(loss_type, level="sequence")[0])
    trl_value, ours = trl_loss(loss_type, delta=1.3, num_items=7)
    assert ours == pytest.approx(trl_value, rel=1e-6)


# --- ms-swift's generation batch


def batch(**kwargs):
    settings = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_processes=1, num_generations=4,
                    steps_per_generation=None, generation_batch_size=None, num_iterations=1, max_steps=0)
    settings.update(kwargs)
    return generation_batch(**settings)


def test_generation_batch_counts_as_ms_swift():
    # Default: steps_per_generation = gradient_accumulation_steps; one optimizer step per generation.
    assert batch(gradient_accumulation_steps=2) == batch(steps_per_generation=2, gradient_accumulation_steps=2)
    plain = batch(gradient_accumulation_steps=2, max_steps=10)
    assert (plain.prompts_per_process, plain.optimizer_steps_per_generation, plain.rollout_steps) == (2, 1, 10)
    # steps_per_generation 4 over accumulation 2: two optimizer steps per generation, × 2 passes → 4 per step.
    spread = batch(steps_per_generation=4, gradient_accumulation_steps=2, num_iterations=2, max_steps=12)
    assert (spread.prompts_per_process, spread.optimizer_steps_per_generation, spread.minibatch_completions,
            spread.rollout_steps) == (4, 2, 8, 3)
    assert batch(generation_batch_size=32, num_processes=2) == batch(steps_per_generation=4, num_processes=2)
    # A group of 4 over 2 processes of 2 completions: every process gets the step's prompt, samples its half.
    split = batch(per_device_train_batch_size=2, num_processes=2)
    assert (split.split_groups, split.global_prompts, split.completions_per_process) == (True, 1, 2)
    assert not batch(per_device_train_batch_size=4, num_processes=2).split_groups


def test_an_optimizer_step_may_span_generations():
    """ms-swift's sudoku example: generation_batch_size 4 on 4 processes × 1 per device (steps_per_generation 1) with
    gradient_accumulation_steps 4: each optimizer step takes 4 generations, all from the same weights, sampled here
    as one step of 4 generations' prompts."""
    spanning = batch(per_device_train_batch_size=1, num_processes=4, num_generations=4, generation_batch_size=4,
                     gradient_accumulation_steps=4, max_steps=5)
    whole = batch(per_device_train_batch_size=1, num_processes=4, num_generations=4, steps_per_generation=4,
                  gradient_accumulation_steps=4, max_steps=5)
    assert spanning.generations_per_step == 4 and whole.generations_per_step == 1
    assert {**vars(spanning), "generations_per_step": 1} == vars(whole)
    assert (spanning.optimizer_steps_per_generation, spanning.rollout_steps, spanning.global_prompts) == (1, 5, 4)
    assert batch(steps_per_generation=2, gradient_accumulation_steps=4).generations_per_step == 2


@pytest.mark.parametrize("settings, message", [
    (dict(per_device_train_batch_size=3), "= 3 completions cannot hold whole groups of --num_generations 4"),
    (dict(generation_batch_size=6), "--generation_batch_size 6 must be a multiple of"),
    (dict(steps_per_generation=2, generation_batch_size=4), "must equal --per_device_train_batch_size × processes"),
    (dict(steps_per_generation=3, gradient_accumulation_steps=2, num_generations=2),
     "must be a multiple of --gradient_accumulation_steps 2, or divide it"),
    (dict(steps_per_generation=1, gradient_accumulation_steps=4, num_iterations=2),
     "an optimizer step spanning generations that are each reused is not supported"),
])
def test_generation_batch_errors(settings, message):
    with pytest.raises(AlignkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        batch(**settings)


def test_a_run_whose_steps_span_generations_trains_like_one_generation_per_step(tmp_path, tiny_model_dir, capsys):
    """--steps_per_generation 1 with --gradient_accumulation_steps 2: each optimizer step's two generations come
    from the same weights, so the run is the one with --steps_per_generation 2, step for step; what is computed
    over one generation (batch-scaled rewards) is refused instead of computed over two."""
    from test_online_cli import COMMON, PLUGIN, records, run_dir_of

    from alignkit.cli import main

    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    flags = ["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins", str(plugin),
             "--reward_funcs", "length_reward", "--num_generations", "2", "--per_device_train_batch_size", "2",
             "--gradient_accumulation_steps", "2", "--max_steps", "2", "--eval_strategy", "no"]
    logged = {}
    for steps in ("1", "2"):
        assert main([*flags, "--steps_per_generation", steps, "--output_dir", str(tmp_path / steps)]) == 0
        logged[steps] = [(r["loss"], r["reward"]) for r in records(run_dir_of(tmp_path / steps)) if "loss" in r]
    assert len(logged["1"]) == 2 and logged["1"] == logged["2"]
    capsys.readouterr()
    assert main([*flags, "--steps_per_generation", "1", "--scale_rewards", "batch", "--output_dir",
                 str(tmp_path / "batch")]) == 2
    assert "--scale_rewards batch with --steps_per_generation below --gradient_accumulation_steps" in \
        capsys.readouterr().err
