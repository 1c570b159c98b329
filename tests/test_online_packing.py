"""Packed rollouts: completion log-probs, entropies and gradients from packed rows (with and without the
group's prompt held once) equal those of the padded batch, and the packed layout runs fewer tokens."""

from __future__ import annotations

import pytest
import torch

from alignkit.algorithms.rollout import as_packable_batch, completion_logprobs, make_rollout
from alignkit.models.packing import Layout, pack


@pytest.fixture(scope="module")
def policy_and_rollout(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    vocab = policy.config.vocab_size
    # Two prompts of different lengths (left padding), four completions each of different lengths (right
    # padding), the first completions of a group sharing their first tokens, as sampled answers often do.
    prompts = [[5, 6, 7, 8, 9, 10], [5, 6, 11]]
    completions = [[20, 21, 22, 2], [20, 21, 23], [24, 2], [25, 26, 27, 28, 29], [30, 31, 2], [30, 2], [32], [33, 34]]
    completions = [[t % vocab for t in c] for c in completions]
    rollout = make_rollout([p for p in prompts for _ in range(4)], completions, pad_id=0, stop_ids=[2],
                           max_new_tokens=5)
    return policy, rollout.as_dict()


@pytest.mark.parametrize("share", [False, True])
def test_packed_completion_logprobs_equal_padded(policy_and_rollout, share):
    policy, experience = policy_and_rollout
    mask = experience["completion_mask"].bool()
    padded, padded_entropy = completion_logprobs(policy, experience, temperature=0.7, with_entropy=True)
    padded_grads = torch.autograd.grad(padded[mask].sum(), [p for p in policy.parameters() if p.requires_grad])
    packed, packed_entropy = completion_logprobs(policy, experience, temperature=0.7, with_entropy=True,
                                                 layout=Layout(padding_free=True, prefix_sharing=share))
    packed_grads = torch.autograd.grad(packed[mask].sum(), [p for p in policy.parameters() if p.requires_grad])
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_entropy[mask], padded_entropy[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prompts_run_once_per_group(policy_and_rollout):
    _, experience = policy_and_rollout
    batch = as_packable_batch(experience)
    assert batch.input_ids.shape[0] == 8
    # Labels are the completion tokens only, in order.
    first = batch.labels[0][batch.labels[0] != -100].tolist()
    assert first == experience["completion_ids"][0][experience["completion_mask"][0].bool()].tolist()
    unshared = pack(batch, share_prefixes=False).num_tokens
    shared = pack(batch, share_prefixes=True).num_tokens
    completion_tokens = int(experience["completion_mask"].sum())
    assert unshared == int(experience["prompt_mask"].sum()) + completion_tokens
    # Prompts [5..10] and [5, 6, 11] share "5 6" (7 prompt nodes); in the first group completions 0 and 1 share
    # "20 21", in the second completions 4 and 5 share "30".
    assert shared == (6 + 1) + completion_tokens - 2 - 1


def test_shared_prompt_prefill_generates_what_separate_prefills_do(tiny_chat_model_dir):
    """Greedy completions with one prefill per group of copies equal those with a prefill per copy, for
    prompts of different lengths (left padding) and chunks that split a batch."""
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    prompts = [p for p in ([5, 6, 7, 8, 9, 10], [5, 6, 11], [12, 13, 14, 15]) for _ in range(3)] + [[16, 17]]
    shared = HFGenerator(model, 0, [2], max_new_tokens=6, temperature=1.0, batch_size=7)
    separate = HFGenerator(model, 0, [2], max_new_tokens=6, temperature=1.0, batch_size=7, share_prompt_prefill=False)
    assert [len(c) for c in shared._chunks(prompts)] == [6, 4]  # runs of copies kept whole when they fit
    assert shared(prompts, greedy=True) == separate(prompts, greedy=True)
    # Sampling: the tempered distribution of each copy is that of the separate prefill (same seed, same draws).
    torch.manual_seed(3)
    sampled = shared(prompts)
    torch.manual_seed(3)
    assert sampled == separate(prompts)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("share", [False, True])
def test_packed_completion_values_equal_padded(policy_and_rollout, lora, share):
    """PPO's value model read from packed rows: the values and their gradients of the padded batch."""
    from alignkit.algorithms.ppo import completion_values
    from alignkit.models.reward_model import new_value_head
    from alignkit.models.scalar_model import TokenScalarModel, value_model_from

    policy, experience = policy_and_rollout
    torch.manual_seed(1)
    reward_model = TokenScalarModel(policy.model, new_value_head(policy.config.hidden_size))
    lora_config = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]} if lora else None
    value_model = value_model_from(reward_model, lora=lora_config)
    trainable = [p for p in value_model.parameters() if p.requires_grad]
    mask = experience["completion_mask"].bool()
    padded = completion_values(value_model, experience)
    padded_grads = torch.autograd.grad(padded[mask].square().sum(), trainable)
    packed = completion_values(value_model, experience, Layout(padding_free=True, prefix_sharing=share))
    packed_grads = torch.autograd.grad(packed[mask].square().sum(), trainable)
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
    assert not packed[~mask].any()  # padding reads 0
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_reward_scores_equal_padded(tiny_chat_model_dir):
    """Scoring GRPO-style groups (answers to one prompt, some identical) from packed rows: the padded rewards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.data.template import ChatEncoder
    from alignkit.models.reward_model import new_value_head
    from alignkit.models.scalar_model import TokenScalarModel, score_conversations

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, attn_implementation="sdpa")
    model = TokenScalarModel(lm.model, new_value_head(lm.config.hidden_size)).eval()
    encoder = ChatEncoder(
        AutoTokenizer.from_pretrained(tiny_chat_model_dir), max_length=256, truncation_strategy="left"
    )
    prompts = [[{"role": "user", "content": "What is 12 + 30?"}], [{"role": "user", "content": "What is 9 - 4?"}]]
    answers = ["Answer: 42", "Answer: 42", "Answer: 41 or so", "Answer: 5", "", "Answer: 5"]
    conversations = [[*prompts[i // 3], {"role": "assistant", "content": a}] for i, a in enumerate(answers)]
    padded = score_conversations(model, encoder, conversations, batch_size=4, packed=False)
    packed = score_conversations(model, encoder, conversations, batch_size=4)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert packed[0] == packed[1] and packed[0] != packed[2]
