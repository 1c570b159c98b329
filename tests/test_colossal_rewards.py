"""ColossalChat's verifiable rewards (gsm8k_reward_fn, math_competition_reward_fn) against hand values, and PPO
scored by them instead of a reward model (train_ppo --no_neural_reward_model), GRPO by them on prepared ids."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignkit.algorithms.reward_funcs import ColossalGsm8kReward, ColossalVerifiableReward
from alignkit.cli import main
from alignkit.commands.colossal.run import parse_script
from alignkit.commands.colossal.translate import translate
from alignkit.errors import AlignkitError

GOOD = "<think>add them</think><answer>5</answer>"


@pytest.mark.parametrize("text, gt, gsm8k, competition", [
    (GOOD, "5", 10.0, 10.0),  # format and answer right
    (GOOD, "6", 1.0, 1.0),  # format right, answer wrong
    ("<think>x</think> <answer> X + 1 </answer>", "x+1", 0.0, 10.0),  # not an integer; blanks and case ignored
    ("<answer>5</answer>", "5", 0.0, 0.0),  # no think tags
    (GOOD + " more", "5", 0.0, 0.0),  # something after the answer
    ("<think>a</think><think>b</think><answer>5</answer>", "5", 0.0, 0.0),  # a tag twice
    ("<answer>5</answer><think>a</think>", "5", 0.0, 0.0),  # out of order
    (GOOD, None, 0.0, 0.0),  # no gt_answer
])
def test_colossalchat_reward_functions_hand_values(text, gt, gsm8k, competition):
    assert ColossalGsm8kReward()([text], gt_answer=[gt]) == [gsm8k]
    assert ColossalVerifiableReward()([text], gt_answer=[gt]) == [competition]


def test_response_format_tags_come_from_the_template_config(tmp_path):
    tags = {"think_start": {"text": "<reasoning>", "num_occur": 1},
            "think_end": {"text": "</reasoning>", "num_occur": 1},
            "answer_start": {"text": "<answer>", "num_occur": 1}, "answer_end": {"text": "</answer>", "num_occur": 1}}
    config = tmp_path / "tpl.json"
    config.write_text(json.dumps({"chat_template": "x", "response_format_tags": tags}))
    reward = ColossalVerifiableReward(args=SimpleNamespace(template_config=str(config)))
    assert reward(["<reasoning>r</reasoning><answer>5</answer>", GOOD], gt_answer=["5", "5"]) == [10.0, 0.0]
    config.write_text(json.dumps({"response_format_tags": {"think_start": {"text": "<t>"}}}))
    with pytest.raises(AlignkitError, match="think_start, think_end, answer_start, answer_end"):
        ColossalVerifiableReward(args=SimpleNamespace(template_config=str(config)))


def values_of(*argv: str) -> dict:
    script, given = parse_script(list(argv))
    return translate(script, given).values


def test_front_end_maps_verifiable_rewards_as_each_script_does():
    ppo = values_of("train_ppo", "--pretrain", "m", "--prompt_dataset", "p", "--rm_pretrain", "c",
                    "--no_neural_reward_model", "--reward_functions", "gsm8k_reward_fn", "math_competition_reward_fn")
    assert (ppo["reward_funcs"], ppo["reward_weights"], ppo["value_model"]) == (
        ["gsm8k_reward_fn", "math_competition_reward_fn"], [2.0, 2.0], "c")  # train_ppo.py counts each twice
    assert "reward_model" not in ppo
    grpo = values_of("train_grpo", "--pretrain", "m", "--prompt_dataset", "p", "--reward_functions", "gsm8k_reward_fn")
    assert (grpo["reward_funcs"], grpo["reward_weights"]) == (["gsm8k_reward_fn"], [1.0])
    # With a reward model the functions have no work, in ColossalChat too.
    assert values_of("train_ppo", "--pretrain", "m", "--prompt_dataset", "p", "--rm_checkpoint_path", "rm",
                     "--reward_functions", "gsm8k_reward_fn")["reward_model"] == ["rm"]


@pytest.mark.parametrize("flags, message", [
    (("--no_neural_reward_model", "--rm_pretrain", "c"), "needs --reward_functions"),
    (("--no_neural_reward_model", "--reward_functions", "gsm8k_reward_fn"), "needs --rm_pretrain"),
    (("--no_neural_reward_model", "--rm_pretrain", "c", "--reward_functions", "mine"), "ColossalChat knows"),
])
def test_front_end_refuses_what_colossalchat_cannot_run(flags, message):
    with pytest.raises(AlignkitError, match=message):
        values_of("train_ppo", "--pretrain", "m", "--prompt_dataset", "p", *flags)


@pytest.fixture
def fixed_answers(monkeypatch, tiny_model_dir):
    """Every rollout answers GOOD (then EOS): the tiny random model never writes the tags by itself."""
    from transformers import AutoTokenizer

    from alignkit.algorithms.rollout import HFGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode(GOOD, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == GOOD
    monkeypatch.setattr(HFGenerator, "__call__", lambda self, prompts, **kwargs: [list(ids) for _ in prompts])


def prompts_with_answers(path: Path) -> Path:
    rows = [{"messages": [{"from": "human", "content": "What is 2 + 3?"}], "gt_answer": "5"},
            {"messages": [{"from": "human", "content": "What is 10 - 4?"}], "gt_answer": "6"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_dir_of(save: Path) -> Path:
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    return run_dir


def test_train_ppo_scores_with_the_functions_and_a_fresh_critic(tiny_model_dir, tmp_path, fixed_answers):
    save = tmp_path / "ppo"
    assert main(["colossal", "train_ppo", "--pretrain", tiny_model_dir, "--rm_pretrain", tiny_model_dir,
                 "--no_neural_reward_model", "--reward_functions", "gsm8k_reward_fn",
                 "--prompt_dataset", str(prompts_with_answers(tmp_path / "p.jsonl")), "--num_episodes", "1",
                 "--num_collect_steps", "1", "--experience_batch_size", "2", "--train_batch_size", "2",
                 "--accumulation_steps", "1", "--num_update_steps", "1", "--max_seq_len", "64",
                 "--mixed_precision", "bf16", "--plugin", "ddp", "--save_path", str(save)]) == 0
    run_dir = run_dir_of(save)
    scores = {row["prompt"]: row["score"] for row in map(json.loads, (run_dir / "completions.jsonl").open())}
    # 2 + 3 = 5 matches: 10, twice (train_ppo.py's double count); 10 - 4 = 6 does not: format only, 1 twice.
    assert sorted(scores.values()) == [2.0, 20.0]
    args = json.loads((run_dir / "args.json").read_text())
    assert (args["reward_funcs"], args["reward_weights"], args["reward_model"]) == (["gsm8k_reward_fn"], [2.0], [])
    assert (save / "actor" / "modeling" / "model.safetensors").is_file()


def test_train_grpo_scores_prepared_prompt_ids_with_the_functions(tiny_model_dir, tmp_path, fixed_answers):
    raw = tmp_path / "raw"
    raw.mkdir()
    prompts_with_answers(raw / "prompts.jsonl")
    out, template = tmp_path / "prompts", tmp_path / "tpl.json"
    assert main(["colossal", "prepare_dataset", "--type", "prompt", "--data_input_dirs", str(raw), "--tokenizer_dir",
                 tiny_model_dir, "--conversation_template_config", str(template), "--data_jsonl_output_dir",
                 str(out / "jsonl"), "--data_arrow_output_dir", str(out / "arrow"), "--num_spliced_dataset_bins",
                 "1"]) == 0
    save = tmp_path / "grpo"
    assert main(["colossal", "train_grpo", "--pretrain", tiny_model_dir, "--prompt_dataset", str(out / "arrow"),
                 "--conversation_template_config", str(template), "--reward_functions", "math_competition_reward_fn",
                 "--num_episodes", "1", "--num_collect_steps", "1", "--experience_batch_size", "2",
                 "--num_generations", "2", "--train_batch_size", "4", "--accumulation_steps", "1",
                 "--num_update_steps", "1", "--max_seq_len", "64", "--mixed_precision", "bf16", "--plugin", "ddp",
                 "--save_path", str(save)]) == 0
    rewards = sorted(row["reward"] for row in map(json.loads, (run_dir_of(save) / "completions.jsonl").open()))
    assert rewards == [1.0, 1.0, 10.0, 10.0]  # each prompt's two completions: gt_answer 5 right, 6 wrong


def test_ppo_takes_a_reward_model_or_functions_not_both(tiny_model_dir, tmp_path, capsys):
    assert main(["rlhf", "--rlhf_type", "ppo", "--model", tiny_model_dir, "--dataset", "arith-prompts#4",
                 "--reward_funcs", "arith_accuracy", "--reward_model", tiny_model_dir,
                 "--output_dir", str(tmp_path)]) != 0
    assert "not both" in capsys.readouterr().err


def test_value_model_gives_a_causal_lm_a_fresh_head_and_keeps_an_rm_checkpoints(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from alignkit.models.load import load_tokenizer
    from alignkit.models.scalar_model import load_value_model

    fresh = load_value_model(tiny_model_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(fresh.backbone.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert fresh.head.weight.shape == (1, lm.config.hidden_size) and fresh.head.bias is not None  # ColossalChat's
    fresh.save_pretrained(tmp_path / "rm")  # an rm checkpoint's layout: backbone + value_head.safetensors
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    kept = load_value_model(str(tmp_path / "rm"))
    assert torch.equal(kept.head.weight, fresh.head.weight) and torch.equal(kept.head.bias, fresh.head.bias)
