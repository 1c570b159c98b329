"""PPO and GRPO end to end through the CLI on the tiny model; reward models from both checkpoint kinds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.data.template import ChatEncoder

COMMON = ["--dataset", "arith-prompts#8", "--val_dataset", "arith-prompts:test#4", "--max_completion_length", "6",
          "--logging_steps", "1", "--report_to", "none", "--dtype", "fp32", "--learning_rate", "1e-2"]

# Rewards longer completions: a random tiny model then gets rewards that differ within every group.
PLUGIN = '''
def length_reward(completions, solution, **kwargs):
    assert len(solution) == len(completions) and all(s.isdigit() for s in solution)
    return [len(c) / 10 for c in completions]
'''


def build_tiny_reward_model(path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    return str(
        build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), AutoTokenizer.from_pretrained(tiny_model_dir))
    )


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


def lora_b(checkpoint: Path, name: str = "adapter_model.safetensors") -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(checkpoint / name).items() if "lora_B" in k}


def test_grpo_runs_end_to_end_with_a_user_reward_function(tiny_model_dir, tmp_path):
    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    code = main(
        [
            "rlhf",
            "--rlhf_type",
            "grpo",
            "--model",
            tiny_model_dir,
            *COMMON,
            "--external_plugins",
            str(plugin),
            "--reward_funcs",
            "length_reward",
            "arith_accuracy",
            "--reward_weights",
            "1",
            "0.5",
            "--num_generations",
            "4",
            "--batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--num_iterations",
            "2",
            "--max_steps",  # optimizer steps, as ms-swift: 2 generations × 2 passes
            "4",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    run_dir = run_dir_of(out)
    logged = records(run_dir)
    train = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    for record in train:
        for key in ("loss", "kl", "entropy", "reward", "reward_std", "rewards/length_reward/mean",
                    "rewards/arith_accuracy/mean", "clip_ratio/region_mean", "completions/mean_length",
                    "completions/stopped_ratio", "grad_norm"):
            assert math.isfinite(record[key]), key
        assert record["reward_std"] > 0
    assert "eval_reward" in logged[-1]
    samples = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8
    assert {"prompt", "completion", "reward", "length_reward", "arith_accuracy"} <= set(samples[0])
    # Two prompts × 4 generations per step; LoRA's B matrices start at zero, so any change is training.
    assert any(t.abs().sum() > 0 for t in lora_b(run_dir / "checkpoint-2").values())


def test_grpo_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    args = ["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--external_plugins", str(plugin),
            "--reward_funcs", "length_reward", "--num_generations", "2", "--batch_size", "4", "--max_steps", "2",
            "--save_steps", "1"]
    assert main([*args, "--output_dir", str(tmp_path / "full")]) == 0
    full = run_dir_of(tmp_path / "full")
    assert main([*args, "--output_dir", str(tmp_path / "resumed"),
                 "--resume_from_checkpoint", str(full / "checkpoint-1")]) == 0
    resumed = run_dir_of(tmp_path / "resumed")
    expected, got = lora_b(full / "checkpoint-2"), lora_b(resumed / "checkpoint-2")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_ppo_runs_end_to_end_with_value_model_and_ptx(tiny_model_dir, reward_model_dir, tmp_path):
    out = tmp_path / "out"
    code = main(["rlhf", "--rlhf_type", "ppo", "--model", tiny_model_dir, "--reward_model", reward_model_dir, *COMMON,
                 "--batch_size", "2", "--gradient_accumulation_steps", "2", "--num_ppo_epochs", "2", "--max_steps", "2",
                 "--pretrain_dataset", "arith-sft#4", "--ptx_coef", "0.3", "--missing_eos_penalty", "1.0",
                 "--output_dir", str(out)])
    assert code == 0
    run_dir = run_dir_of(out)
    train = [r for r in records(run_dir) if "loss" in r]
    assert len(train) == 2
    for record in train:
        for key in ("loss", "loss/policy_avg", "loss/value_avg", "loss/ptx_avg", "objective/kl", "objective/scores",
                    "objective/entropy", "policy/clipfrac_avg", "val/clipfrac_avg", "completions/stopped_ratio"):
            assert math.isfinite(record[key]), key
    assert "eval_score" in records(run_dir)[-1]
    checkpoint = run_dir / "checkpoint-2"
    assert any(t.abs().sum() > 0 for t in lora_b(checkpoint).values())
    # The value model trains too: its LoRA and its head (which started as the reward model's score head).
    assert any(t.abs().sum() > 0 for t in lora_b(checkpoint / "value_model").values())
    head = load_file(checkpoint / "value_model" / "value_head.safetensors")["weight"]
    initial = load_file(Path(reward_model_dir) / "model.safetensors")["score.weight"]
    assert head.shape == initial.shape and not torch.equal(head, initial)


def test_reward_model_scores_match_transformers_sequence_classification(reward_model_dir):
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.scalar_model import load_scalar_model, score_conversations

    model, tokenizer = load_scalar_model(reward_model_dir, adapters=[])
    encoder = ChatEncoder(tokenizer, max_length=256, truncation_strategy="left")
    conversations = [[{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": answer}]
                     for answer in ("Answer: 2", "It is 3, I think")]
    scores = score_conversations(model, encoder, conversations, batch_size=2)
    reference = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    for conversation, score in zip(conversations, scores):
        ids = torch.tensor([encoder.tokens(encoder.render(conversation, generation_prompt=False))])
        assert score.item() == pytest.approx(reference(input_ids=ids).logits.item(), abs=1e-5)


def test_rm_checkpoint_layout_is_a_reward_model(tiny_model_dir, tmp_path):
    """An `rm` run saves the LM (here a full model) with value_head.safetensors beside it."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.models.scalar_model import load_scalar_model

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    weight = torch.randn(1, 32)
    save_file({"weight": weight}, str(tmp_path / "rm" / "value_head.safetensors"))
    model, _ = load_scalar_model(str(tmp_path / "rm"), adapters=[])
    ids = torch.tensor([[5, 6, 7]])
    hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # (1, 3, 32)
    torch.testing.assert_close(model(ids, torch.ones_like(ids)), (hidden @ weight.T).squeeze(-1))


def test_online_flag_errors(tiny_model_dir, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir]) == 2
    assert "--rlhf_type grpo needs rewards: --reward_funcs" in capsys.readouterr().err
    assert main(["rlhf", "--rlhf_type", "ppo", "--model", tiny_model_dir]) == 2
    assert "--rlhf_type ppo needs one --reward_model" in capsys.readouterr().err
    assert main(["rlhf", "--rlhf_type", "grpo", "--reward_funcs", "arith_accuracy", "--loss_type", "sigmoid"]) == 2
    assert "takes one --loss_type of grpo, bnpo, dr_grpo" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_use_vllm_without_gpu_is_a_clear_error(tiny_model_dir, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--reward_funcs", "arith_accuracy",
                 "--use_vllm"]) == 2
    err = capsys.readouterr().err
    assert "--use_vllm needs" in err and ("vllm package" in err or "CUDA GPU" in err)


def test_ppo_on_an_rm_run_checkpoint_scores_like_its_scorer(tiny_model_dir, tmp_path):
    """SFT → RM → PPO on the tiny model: the reward model is an `alignkit rlhf --rlhf_type rm` LoRA checkpoint."""
    from alignkit.models.reward_model import load_reward_model
    from alignkit.models.scalar_model import load_scalar_model, score_conversations

    assert main(["rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#8",
                 "--val_dataset", "arith-pref:test#2", "--max_steps", "2", "--batch_size", "2", "--report_to", "none",
                 "--dtype", "fp32", "--learning_rate", "1e-2", "--output_dir", str(tmp_path / "rm")]) == 0
    rm_checkpoint = run_dir_of(tmp_path / "rm") / "checkpoint-2"
    assert (rm_checkpoint / "value_head.safetensors").is_file() and (rm_checkpoint / "adapter_config.json").is_file()

    conversations = [[{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": a}]
                     for a in ("Answer: 42", "Answer: 41 or so")]
    model, tokenizer = load_scalar_model(str(rm_checkpoint), adapters=[])
    ours = score_conversations(model, ChatEncoder(tokenizer, max_length=256, truncation_strategy="left"),
                               conversations, batch_size=2)
    theirs = load_reward_model(str(rm_checkpoint), dtype="fp32").score(conversations)
    torch.testing.assert_close(ours, torch.tensor(theirs), atol=1e-5, rtol=1e-5)

    out = tmp_path / "ppo"
    assert (
        main(
            [
                "rlhf",
                "--rlhf_type",
                "ppo",
                "--model",
                tiny_model_dir,
                "--reward_model",
                str(rm_checkpoint),
                *COMMON,
                "--batch_size",
                "2",
                "--num_ppo_epochs",
                "1",
                "--max_steps",
                "1",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    (record,) = [r for r in records(run_dir_of(out)) if "loss" in r]
    assert math.isfinite(record["loss"]) and math.isfinite(record["objective/scores"])
