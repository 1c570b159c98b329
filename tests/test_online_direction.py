"""The sign of the online policy update: one GRPO step raises the log-probability of the completions that
beat their group and lowers that of the ones that fell behind."""

from __future__ import annotations

import torch

from alignkit.algorithms.grpo import GRPO
from alignkit.algorithms.rewards import RewardFunction
from alignkit.algorithms.rollout import EncodedPrompt, HFGenerator, batched_logprobs


def test_one_grpo_step_moves_log_probs_towards_the_advantage(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stop = [tokenizer.eos_token_id]
    generator = HFGenerator(policy, tokenizer.pad_token_id, stop, max_new_tokens=5, temperature=1.0, batch_size=8)
    # Any reward that differs within groups of random completions: the completion's length in characters is even.
    even_length = RewardFunction.wrap(
        "even_length", lambda completions, **_: [float(len(c) % 2 == 0) for c in completions]
    )
    grpo = GRPO(
        generator=generator,
        tokenizer=tokenizer,
        stop_ids=stop,
        reward_funcs=[even_length],
        reward_weights=[1.0],
        num_generations=8,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.2,
        loss_type="grpo",
        scale_rewards="group",
        temperature=1.0,
        max_completion_length=5,
        missing_eos_penalty=None,
        forward_batch_size=16,
        needs_old_logprobs=False,
    )
    prompts = [EncodedPrompt([{"role": "user", "content": "hi"}], tokenizer.encode("hello there"), {}),
               EncodedPrompt([{"role": "user", "content": "yo"}], tokenizer.encode("what is"), {})]
    experience, _, _ = grpo.experience(policy, prompts)
    advantages = experience["advantages"]
    assert (advantages > 0).any() and (advantages < 0).any()

    mask = experience["completion_mask"].float()
    before = (batched_logprobs(policy, experience, temperature=1.0, batch_size=16)[0] * mask).sum(-1)
    loss, _ = grpo.loss(policy, experience)
    loss.backward()
    with torch.no_grad():
        for parameter in policy.parameters():
            if parameter.grad is not None:
                parameter -= 1e-2 * parameter.grad  # plain gradient descent: the direction, not Adam's scaling
    after = (batched_logprobs(policy, experience, temperature=1.0, batch_size=16)[0] * mask).sum(-1)
    change = after - before  # (N,)
    assert change[advantages > 0].min() > 0 and change[advantages < 0].max() < 0
