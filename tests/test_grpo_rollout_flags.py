"""ms-swift's rollout flags reaching the rollout (--top_k --top_p --min_p --stop_words --enable_thinking),
DAPO's dynamic sampling and overlong filter, --max_length as the prompt limit, and the GRPO family end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_online_cli import COMMON, PLUGIN, records, run_dir_of

from alignkit.algorithms.rollout import PerRowSampler, cut_at_stop_words, filter_logits, make_rollout
from alignkit.cli import main


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert filter_logits(logits, top_k=2).isinf().tolist() == [[False, False, True, True]]
    # Nucleus 0.75: 0.5 alone is short of it, 0.5 + 0.3 reaches it → keep two.
    assert filter_logits(logits, top_p=0.75).isinf().tolist() == [[False, False, True, True]]
    assert filter_logits(logits, top_p=0.5).isinf().tolist() == [[False, True, True, True]]
    # min_p 0.2: below 0.2 × 0.5 = 0.1 goes.
    assert filter_logits(logits, min_p=0.2).isinf().tolist() == [[False, False, False, True]]
    assert torch.equal(filter_logits(logits), logits) and inf not in filter_logits(logits).tolist()[0]


def test_seeded_sampler_draws_only_inside_the_filter():
    logits = torch.zeros(1, 6)
    logits[0, 4] = 0.1  # the most likely token, barely
    draws = {PerRowSampler([seed], 1.0, top_k=1)(None, logits).argmax().item() for seed in range(40)}
    assert draws == {4}
    wide = {PerRowSampler([seed], 1.0)(None, logits).argmax().item() for seed in range(40)}
    assert len(wide) > 3


class Letters:
    """A tokenizer whose token i decodes to the i-th letter."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_stop_words_end_a_completion_and_count_as_stopped():
    # "a b c d e": the word "cd" completes at token 3; stop id 1 ends the second before its "cd".
    cut = cut_at_stop_words([[0, 1, 2, 3, 4], [0, 4]], Letters(), ["cd"])
    assert cut == [([0, 1, 2, 3], True), ([0, 4], False)]
    rollout = make_rollout([[7], [7]], [[0, 2, 3, 4], [0, 1, 2, 3]], pad_id=9, stop_ids=[1], max_new_tokens=8,
                           stop_words=["cd"], tokenizer=Letters())
    assert rollout.completion_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert rollout.stopped.tolist() == [True, True]


def test_enable_thinking_reaches_the_chat_template(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    from alignkit.data.template import ChatEncoder

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                               "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}")
    encoder = ChatEncoder(tokenizer, max_length=64)
    encoder.template = encoder.template.__class__(**{**encoder.template.__dict__, "source": tokenizer.chat_template})
    assert "<think>" not in encoder.render([{"role": "user", "content": "hi"}], generation_prompt=True)
    encoder.chat_template_kwargs = {"enable_thinking": False}
    assert encoder.render([{"role": "user", "content": "hi"}], generation_prompt=True).endswith("<think></think>")


def grpo_run(tmp_path, tiny_model_dir, *extra):
    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    code = main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins", str(plugin),
                 "--reward_funcs", "length_reward", "--num_generations", "4", "--per_device_train_batch_size", "4",
                 "--output_dir", str(out), *extra])
    assert code == 0
    return run_dir_of(out)


@pytest.mark.parametrize("flags", [
    ["--loss_type", "dapo", "--importance_sampling_level", "sequence", "--epsilon_high", "0.28", "--delta", "1.5",
     "--steps_per_generation", "2", "--max_steps", "2", "--top_k", "20", "--top_p", "0.9", "--log_entropy", "true"],
    ["--loss_type", "sapo", "--advantage_estimator", "rloo", "--overlong_filter", "true", "--dynamic_sample", "true",
     "--top_entropy_quantile", "0.5", "--max_steps", "1", "--stop_words", "7"],
    ["--loss_type", "cispo", "--epsilon_high", "5.0", "--advantage_estimator", "reinforce_plus_plus", "--beta", "0.0",
     "--num_iterations", "2", "--max_steps", "2", "--log_completions", "true", "--sleep_level", "1"],
])
def test_grpo_family_runs_end_to_end(tmp_path, tiny_model_dir, flags):
    run_dir = grpo_run(tmp_path, tiny_model_dir, *flags)
    train = [r for r in records(run_dir) if "loss" in r]
    assert train and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)
    args = json.loads((run_dir / "args.json").read_text()) if (run_dir / "args.json").exists() else {}
    if "--log_entropy" in flags:
        assert {"entropy/mean", "entropy/max", "entropy/min"} <= set(train[0])
        # steps_per_generation 2 over accumulation 1: 2 optimizer steps per generation, so --max_steps 2 is 1 step.
        assert [r["step"] for r in train] == [1]
    if "rloo" in flags:
        assert "dynamic_sample/resamples" in train[0] and "kl" in train[0]  # rloo: KL in the reward by default
    if "--num_iterations" in flags:
        assert [r["step"] for r in train] == [1]  # 2 passes = 2 optimizer steps = --max_steps 2
    del args


def test_max_length_is_the_prompt_limit(tmp_path, tiny_model_dir, caplog):
    """ms-swift's --max_length for grpo limits the prompt; completions come on top of it."""
    run_dir = grpo_run(tmp_path, tiny_model_dir, "--max_length", "40", "--max_completion_length", "40",
                       "--max_steps", "1")
    assert [r for r in records(run_dir) if "loss" in r]


def test_hf_generator_passes_the_filters_to_seeded_sampling(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[3, 4, 5], [3, 4, 5], [6, 7]]
    greedy = HFGenerator(model, 0, [2], max_new_tokens=5, temperature=1.0, batch_size=4)(prompts, greedy=True)
    top1 = HFGenerator(model, 0, [2], max_new_tokens=5, temperature=1.0, batch_size=4, top_k=1)(prompts,
                                                                                                seeds=[1, 2, 3])
    assert top1 == greedy  # top-k 1 leaves only the argmax, whatever the seed
    nucleus = HFGenerator(model, 0, [2], max_new_tokens=5, temperature=1.0, batch_size=4, top_p=1e-6)(prompts,
                                                                                                     seeds=[1, 2, 3])
    assert nucleus == greedy  # so does a nucleus smaller than the top token's probability


def tiny_grpo(tiny_model_dir, generator, reward, **settings):
    from transformers import AutoTokenizer

    from alignkit.algorithms.grpo import GRPO
    from alignkit.algorithms.rewards import RewardFunction

    values = dict(generator=generator, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), stop_ids=[2],
                  reward_funcs=[RewardFunction.wrap("r", reward)], reward_weights=[1.0], num_generations=2, beta=0.0,
                  epsilon=0.2, epsilon_high=0.2, loss_type="bnpo", scale_rewards="group", temperature=1.0,
                  max_completion_length=4, missing_eos_penalty=None, forward_batch_size=8, needs_old_logprobs=False)
    values.update(settings)
    return GRPO(**values)


def test_dynamic_sample_replaces_groups_of_equal_rewards(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    calls = []

    def generator(ids, greedy, seeds):
        calls.append(len(ids))
        return [[5 + i % 2, 2] for i in range(len(ids))]  # copies alternate between two completions

    def reward(completions, prompts, **kwargs):  # "flat" prompts: the same reward for both completions
        return [0.0 if p[-1]["content"] == "flat" else float(i % 2) for i, p in enumerate(prompts)]

    flat = EncodedPrompt(messages=[{"role": "user", "content": "flat"}], ids=[3], extras={})
    varied = EncodedPrompt(messages=[{"role": "user", "content": "varied"}], ids=[4], extras={})
    grpo = tiny_grpo(tiny_model_dir, generator, reward, dynamic_sample=True, max_resample_times=3,
                     resample_pool=[varied, flat])
    experience, metrics, samples = grpo.experience(model, [flat, varied], seeds=[1, 2])
    # The flat group is replaced by a varied one from the pool: every group now carries a signal.
    assert [s["prompt"] for s in samples] == ["varied"] * 4
    assert experience["advantages"].abs().min() > 0.5 and metrics["dynamic_sample/resamples"] >= 1
    assert len(calls) == 1 + metrics["dynamic_sample/resamples"]
    # Without enough varied groups within --max_resample_times, the original batch is kept.
    grpo = tiny_grpo(tiny_model_dir, generator, reward, dynamic_sample=True, max_resample_times=2,
                     resample_pool=[flat])
    _, metrics, samples = grpo.experience(model, [flat, varied], seeds=[1, 2])
    assert [s["prompt"] for s in samples] == ["flat", "flat", "varied", "varied"]
    assert metrics["dynamic_sample/resamples"] == 2


def test_overlong_filter_drops_truncated_completions_from_the_loss(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rollout = make_rollout([[3, 4], [3, 4]], [[5, 6, 2], [7, 8, 9, 10]], pad_id=0, stop_ids=[2], max_new_tokens=4)
    batch = {**rollout.as_dict(), "advantages": torch.tensor([1.0, -1.0])}
    assert rollout.stopped.tolist() == [True, False]
    filtered = tiny_grpo(tiny_model_dir, None, len, overlong_filter=True).loss(model, batch)[0]
    first = {k: v[:1, : (3 if k.startswith("completion") else None)] if v.ndim == 2 else v[:1]
             for k, v in batch.items()}
    alone = tiny_grpo(tiny_model_dir, None, len).loss(model, first)[0]
    kept = tiny_grpo(tiny_model_dir, None, len).loss(model, batch)[0]
    assert filtered.item() == pytest.approx(alone.item(), abs=1e-6)
    assert kept.item() != pytest.approx(alone.item(), abs=1e-3)


def test_groups_split_across_processes_see_the_whole_group(tiny_model_dir):
    """ms-swift's generation batch may split a group across processes: each samples its slice of the step's
    completions, and the rewards are summed over the processes so the advantages are the whole group's."""
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def generator(ids, greedy, seeds):  # the completion depends on its seed alone, as the seeded sampler's does
        return [[5 + seed % 7, 2] for seed in seeds]

    def reward(completions, response_token_ids, **kwargs):
        return [float(ids[0]) for ids in response_token_ids]

    grpo = tiny_grpo(tiny_model_dir, generator, reward, num_generations=4)
    prompts = [EncodedPrompt(messages=[{"role": "user", "content": "q"}], ids=[3, 4], extras={})]
    whole, _, _ = grpo.experience(model, prompts, seeds=[11])
    sent = {}

    def record(rank):  # what a process contributes to the sum
        return lambda values: sent.setdefault(rank, values.clone())

    for rank in (0, 1):
        grpo.experience(model, prompts, seeds=[11], part=(rank, 2), sum_all=record(rank))
    # Now each process's sum over processes: its own vector plus the other's.
    first, _, _ = grpo.experience(model, prompts, seeds=[11], part=(0, 2), sum_all=lambda v: v + sent[1])
    second, _, _ = grpo.experience(model, prompts, seeds=[11], part=(1, 2), sum_all=lambda v: v + sent[0])
    assert torch.equal(torch.cat([first["completion_ids"], second["completion_ids"]]), whole["completion_ids"])
    assert torch.cat([first["advantages"], second["advantages"]]).tolist() == pytest.approx(
        whole["advantages"].tolist())
    assert whole["advantages"].abs().sum() > 0
