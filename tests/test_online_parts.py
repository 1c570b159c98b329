"""Rollouts, reward functions, reward/value models and the online schedule, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from alignkit.algorithms.reward_funcs import arith_accuracy, arith_format
from alignkit.algorithms.rewards import (
    resolve_reward_funcs,
    reward_arguments,
    score_completions,
)
from alignkit.algorithms.rollout import (
    HFGenerator,
    batched_logprobs,
    completion_tensors,
    make_rollout,
    stop_token_ids,
)
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.training.online_loop import make_schedule, select


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tokenizer, ChatEncoder(tokenizer, max_length=256)


def test_completions_end_at_first_stop_token_which_is_kept():
    ids, mask, stopped = completion_tensors([[5, 2, 9, 9], [5, 6, 7, 8], [2]], stop_ids=[2], pad_id=0, max_new_tokens=4)
    assert ids.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert stopped.tolist() == [True, False, True]


def test_stop_tokens_are_the_templates_end_of_turn(tiny):
    _, tokenizer, encoder = tiny
    assert stop_token_ids(encoder) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # A tokenizer whose EOS is not the end-of-turn marker gets both.
    tokenizer_eos = tokenizer.eos_token
    tokenizer.eos_token = "<|endoftext|>"
    try:
        assert stop_token_ids(encoder) == [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")]
    finally:
        tokenizer.eos_token = tokenizer_eos


def test_rollout_logprobs_equal_generation_scores_with_left_padding(tiny):
    """The training forward (left-padded prompt + completion, explicit positions) reproduces, token for token,
    the distributions generate() sampled from with its KV cache."""
    model, tokenizer, encoder = tiny
    prompts = [encoder.encode_prompt([{"role": "user", "content": text}]) for text in ("What is 12 + 30?", "hi")]
    assert len(prompts[0]) != len(prompts[1])  # so one of them is padded
    generator = HFGenerator(model, tokenizer.pad_token_id, stop_token_ids(encoder), 6, temperature=0.7, batch_size=2)
    torch.manual_seed(0)
    rollout = make_rollout(prompts, generator(prompts), pad_id=tokenizer.pad_token_id, stop_ids=generator.stop_ids,
                           max_new_tokens=6)
    logprobs, entropy = batched_logprobs(model, rollout.as_dict(), temperature=0.7, batch_size=1, with_entropy=True)

    # Naive reference: each prompt alone (no padding), one full forward per prefix, logits / temperature.
    for row, prompt in enumerate(prompts):
        length = int(rollout.completion_mask[row].sum())
        completion = rollout.completion_ids[row, :length].tolist()
        for t in range(length):
            logits = model(input_ids=torch.tensor([prompt + completion[:t]])).logits[0, -1] / 0.7
            expected = torch.log_softmax(logits, -1)[completion[t]]
            assert logprobs[row, t].item() == pytest.approx(expected.item(), abs=1e-4)
            probs = torch.softmax(logits, -1)
            assert entropy[row, t].item() == pytest.approx(-(probs * probs.log()).sum().item(), abs=1e-4)


def test_sampling_draws_from_the_whole_tempered_distribution(tiny):
    """No top-k / top-p filtering sneaks in from transformers' defaults: every token keeps a finite score."""
    model, tokenizer, encoder = tiny
    seen = []

    class Spy:
        def parameters(self):
            return model.parameters()

        def generate(self, **kwargs):
            out = model.generate(**kwargs, output_scores=True, return_dict_in_generate=True)
            seen.extend(out.scores)
            return out.sequences

    generator = HFGenerator(Spy(), tokenizer.pad_token_id, stop_token_ids(encoder), 4, temperature=0.9, batch_size=2)
    generator([encoder.encode_prompt([{"role": "user", "content": "hi"}])])
    assert seen and all(torch.isfinite(scores).all() for scores in seen)


def test_select_trims_padding_columns():
    experience = {
        "prompt_ids": torch.tensor([[0, 0, 5], [0, 7, 8]]),
        "prompt_mask": torch.tensor([[0, 0, 1], [0, 1, 1]]),
        "completion_ids": torch.tensor([[1, 2, 0], [3, 0, 0]]),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
        "advantages": torch.tensor([0.5, -0.5]),
    }
    batch = select(experience, torch.tensor([1]))
    assert batch["prompt_ids"].tolist() == [[7, 8]]
    assert batch["completion_ids"].tolist() == [[3]]
    assert batch["advantages"].tolist() == [-0.5]


def test_builtin_rewards():
    completions = ["Answer: 85", "  Answer: 84\n", "The sum is 85. Answer: 85", "85"]
    assert arith_accuracy(completions, solution=["85"] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert arith_format(completions) == [1.0, 1.0, 0.0, 0.0]
    assert arith_accuracy(["Answer: 1"], solution=[None]) == [None]


PLUGIN = '''
CALLS = []

def echo_solution(completions, solution, **kwargs):
    CALLS.append({"completions": completions, "solution": solution, **kwargs})
    return [float(len(c)) for c in completions]

def named_only(completions, difficulty):
    return [None if d == "skip" else float(d == "hard") for d in difficulty]
'''


def test_user_reward_function_gets_extra_columns(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(PLUGIN)
    funcs = resolve_reward_funcs(["echo_solution", "named_only", "arith_accuracy"], [str(plugin)])
    prompts = [[{"role": "user", "content": "What is 1 + 1?"}], [{"role": "user", "content": "And 2 + 2?"}]]
    arguments = reward_arguments(prompts, ["Answer: 2", "Answer: 5"],
                                 [{"solution": "2", "difficulty": "hard"}, {"solution": "4", "difficulty": "skip"}])
    rewards = score_completions(funcs, arguments)  # (N, F)
    assert rewards[:, 0].tolist() == [9.0, 9.0]
    assert rewards[0, 1].item() == 1.0 and rewards[1, 1].isnan()  # None → NaN: no opinion
    assert rewards[:, 2].tolist() == [1.0, 0.0]
    (call,) = funcs[0].func.__globals__["CALLS"]
    assert call["solution"] == ["2", "4"] and call["difficulty"] == ["hard", "skip"]
    assert call["prompts"] == prompts and call["completions"] == ["Answer: 2", "Answer: 5"]
    # `file.py:function` names a function without --external_plugins.
    (direct,) = resolve_reward_funcs([f"{plugin}:named_only"], [])
    assert direct.func.__name__ == "named_only"


def test_reward_function_errors(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text(PLUGIN)
    (func,) = resolve_reward_funcs(["named_only"], [str(plugin)])
    with pytest.raises(AlignkitError, match="named_only needs the argument.s. difficulty.*extra columns: solution"):
        func(reward_arguments([[]], ["x"], [{"solution": "1"}]))
    known = ("accuracy, format, react_format, cosine, repetition, soft_overlong, gsm8k_reward_fn, "
             "math_competition_reward_fn, arith_accuracy, arith_format, echo_solution")
    with pytest.raises(AlignkitError, match=f"--reward_funcs nope: unknown; known: {known}"):
        resolve_reward_funcs(["nope"], [str(plugin)])
    with pytest.raises(AlignkitError, match="has no function missing"):
        resolve_reward_funcs([f"{plugin}:missing"], [])
    with pytest.raises(AlignkitError, match="--external_plugins nowhere.py: no such file"):
        resolve_reward_funcs(["arith_accuracy"], ["nowhere.py"])


def test_schedule_follows_trl_and_colossalchat_flags():
    common = dict(num_prompts=100, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=1,
                  experience_batch_size=None, num_collect_steps=1, train_batch_size=None, update_epochs=1,
                  max_steps=-1, num_episodes=None, num_train_epochs=1.0)
    grpo = make_schedule(**{**common, "num_generations": 4})
    assert (grpo.prompts_per_step, grpo.sequences_per_step, grpo.minibatch_size, grpo.micro_batch_size) == (2, 8, 8, 4)
    assert grpo.steps == 50 and grpo.optimizer_steps_per_step == 1
    ppo = make_schedule(**{**common, "num_generations": 1, "num_mini_batches": 2, "update_epochs": 4})
    assert (ppo.prompts_per_step, ppo.minibatch_size, ppo.optimizer_steps_per_step, ppo.steps) == (16, 8, 8, 7)
    colossal = make_schedule(**{**common, "num_generations": 1, "experience_batch_size": 6, "num_collect_steps": 2,
                                "train_batch_size": 4, "num_episodes": 3})
    assert (colossal.prompts_per_step, colossal.minibatch_size, colossal.optimizer_steps_per_step, colossal.steps) == (
        12, 4, 3, 3)
    with pytest.raises(AlignkitError, match="cannot hold whole groups of --num_generations 3"):
        make_schedule(**{**common, "num_generations": 3})
    with pytest.raises(AlignkitError, match="--max_steps 5 and --num_episodes 3"):
        make_schedule(**{**common, "num_generations": 1, "max_steps": 5, "num_episodes": 3})


def test_value_model_checkpoint_round_trip(tiny_model_dir, tmp_path):
    """PPO's value model (LoRA backbone + full head) saves in the rm layout and loads back exactly (resume)."""
    from transformers import AutoModel

    from alignkit.models.scalar_model import TokenScalarModel, value_model_from

    def build():
        torch.manual_seed(0)
        return value_model_from(
            TokenScalarModel(AutoModel.from_pretrained(tiny_model_dir), torch.nn.Linear(32, 1, bias=False)),
            lora={"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]},
        )

    trained = build()
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    trained.save_pretrained(tmp_path)
    assert (tmp_path / "value_head.safetensors").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    restored = build()
    restored.load_trained(tmp_path)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(restored(ids, torch.ones_like(ids)), trained(ids, torch.ones_like(ids)), rtol=0, atol=0)
    assert not torch.equal(build()(ids, torch.ones_like(ids)), trained(ids, torch.ones_like(ids)))


def test_prompts_over_the_limit_follow_truncation_strategy(tiny):
    from alignkit.data.rows import PromptRow, RowSource
    from alignkit.errors import DataError
    from alignkit.training.online_run import encode_prompts

    _, _, encoder = tiny
    short = PromptRow([{"role": "user", "content": "hi"}], extras={"solution": "1"})
    long = PromptRow([{"role": "user", "content": "hello world " * 20}], source=RowSource("data.jsonl", 2))
    limit = len(encoder.encode_prompt(short.prompt))
    kept = encode_prompts(encoder, [short, long], limit, "delete", "training")
    assert [p.extras for p in kept] == [{"solution": "1"}]
    assert kept[0].ids == encoder.encode_prompt(short.prompt) and kept[0].messages[-1]["content"] == "hi"
    cut = encode_prompts(encoder, [long], limit, "left", "training")
    assert cut[0].ids == encoder.encode_prompt(long.prompt)[-limit:]
    with pytest.raises(DataError, match="data.jsonl.*2"):
        encode_prompts(encoder, [long], limit, "raise", "training")
