"""grpo with --teacher_model (ms-swift's OPD-RL): each token's advantage gains teacher_kl_coef × (log π_teacher −
log π_old) of the sampled token; with one completion per prompt that term is the whole signal."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.cli import main
from alignkit.losses import rl


def test_a_lone_completion_has_a_zero_advantage():
    advantages, std = rl.group_advantages(torch.tensor([3.0, -1.0]), 1, scale="group")
    assert advantages.tolist() == [0.0, 0.0] and std.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="rloo"):
        rl.group_advantages(torch.tensor([3.0]), 1, scale="group", estimator="rloo")


def test_the_teacher_term_is_added_to_each_tokens_advantage(tiny_model_dir, tiny_chat_model_dir):
    from test_grpo_rollout_flags import tiny_grpo
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import EncodedPrompt, batched_logprobs

    def generator(ids, greedy, seeds):
        return [[5, 2, 9], [6, 7, 2]] * (len(ids) // 2)

    def reward(completions, **kwargs):
        return [float(i % 2) for i in range(len(completions))]

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    prompt = EncodedPrompt(messages=[{"role": "user", "content": "hi"}], ids=[3, 4], extras={})
    plain, _, _ = tiny_grpo(tiny_model_dir, generator, reward).experience(student, [prompt], seeds=[1])
    grpo = tiny_grpo(tiny_model_dir, generator, reward, teacher=teacher, teacher_kl_coef=0.5)
    experience, metrics, _ = grpo.experience(student, [prompt], seeds=[1])
    mask = experience["completion_mask"].float()
    gap = (batched_logprobs(teacher, experience, temperature=1.0, batch_size=8)[0]
           - batched_logprobs(student, experience, temperature=1.0, batch_size=8)[0]) * mask
    expected = (plain["advantages"].unsqueeze(-1) + 0.5 * gap) * mask
    torch.testing.assert_close(experience["advantages"], expected, atol=1e-5, rtol=1e-5)
    assert metrics["teacher_kl"] == pytest.approx(((gap.exp() - gap - 1) * mask).sum().item() / mask.sum().item(),
                                                  rel=1e-5)
    loss, _ = grpo.loss(student, experience)  # per-token advantages reach the loss (bnpo: −mean of A_t, ratio 1)
    expected_loss = (-experience["advantages"] * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)


def test_grpo_distils_from_a_teacher_with_one_completion_per_prompt(tiny_model_dir, tiny_chat_model_dir, tmp_path):
    code = main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--teacher_model", tiny_chat_model_dir,
                 "--num_generations", "1", "--dataset", "arith-prompts#8", "--max_completion_length", "6",
                 "--batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
                 "--dtype", "fp32", "--split_dataset_ratio", "0", "--eval_strategy", "no", "--output_dir",
                 str(tmp_path)])
    assert code == 0
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all(r["teacher_kl"] > 0 and r["grad_norm"] > 0 for r in logged)


@pytest.mark.parametrize("argv, message", [
    (["--num_generations", "1"], "--num_generations must be at least 2"),
    (["--teacher_model", "T", "--loss_type", "fipo"], "--loss_type fipo with --teacher_model"),
])
def test_refusals(tiny_model_dir, argv, message, capsys):
    code = main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#8",
                 "--reward_funcs", "arith_format", "--max_steps", "1", *argv])
    assert code == 2 and message in capsys.readouterr().err
