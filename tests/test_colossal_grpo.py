"""ColossalChat's GRPO pieces in alignkit's GRPO: the KL folded into the reward (mean over the completion's tokens,
--kl_reward_reduction mean) and the annealed rollout temperature (--final_temperature), against hand values."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.training.temperature import TemperatureAnnealing, temperature_annealing

DATA = Path(__file__).parent / "fixtures" / "data"
COMMON = ["--dataset", "arith-prompts#4", "--max_completion_length", "4", "--logging_steps", "1", "--report_to",
          "none", "--dtype", "fp32", "--reward_funcs", "arith_format", "--num_generations", "2",
          "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--beta", "0"]


def test_annealing_is_colossalchats_schedule_at_given_steps():
    # AnnealingScheduler(1.0, 0.9, warmup 5, annealing 15): held to step 5, then the line from 1.0 at 0 to 0.9 at 15.
    schedule = TemperatureAnnealing(start=1.0, end=0.9, hold_steps=5, annealing_steps=15)
    got = [schedule.at(s) for s in (0, 5, 6, 10, 14, 15, 100)]
    assert got == pytest.approx([1.0, 1.0, 0.96, 0.9 + 0.1 / 3, 0.9 + 0.1 / 15, 0.9, 0.9])
    # One episode (train_grpo.sh's smallest): warm-up int(1/6) = 0, annealing int(1/2) = 0: T1 from the 1st step.
    short = TemperatureAnnealing(1.0, 0.9, 0, 0)
    assert (short.at(0), short.at(1)) == (1.0, 0.9)


def test_annealing_flags_are_checked():
    from alignkit.config.run import RunArguments

    assert temperature_annealing(RunArguments(rlhf_type="grpo")) is None
    with pytest.raises(AlignkitError, match="--temperature_annealing_steps"):
        temperature_annealing(RunArguments(rlhf_type="grpo", final_temperature=0.5))
    with pytest.raises(AlignkitError, match="need --final_temperature"):
        temperature_annealing(RunArguments(rlhf_type="grpo", temperature_annealing_steps=3))


def test_kl_mean_reduction_hand_values():
    from alignkit.losses.rl import sequence_kl_penalty

    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # Σ (old − ref): 0.5 − 1 − 2 = −2.5 over 3 tokens; 0.5 + 1 = 1.5 over 2 tokens (the padded one ignored).
    assert sequence_kl_penalty(old, ref, mask).tolist() == pytest.approx([-2.5, 1.5])
    assert sequence_kl_penalty(old, ref, mask, reduction="mean").tolist() == pytest.approx([-2.5 / 3, 0.75])


def completion_logprobs_by_hand(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return logps[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]]


@torch.no_grad()
def test_grpo_reward_is_reward_minus_kl_coef_times_mean_token_kl(tiny_model_dir):
    """ColossalChat's NaiveExperienceMaker (use_grpo): r − kl_coef·Σ_t(log π − log π_ref)/|o|, then
    (r − mean) / (std + 1e-4) over the group."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignkit.algorithms.grpo import GRPO
    from alignkit.algorithms.rewards import RewardFunction
    from alignkit.algorithms.rollout import EncodedPrompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference = copy.deepcopy(model)
    torch.manual_seed(3)
    for parameter in reference.parameters():
        parameter.add_(0.3 * torch.randn_like(parameter))
    completions = [[5, 6, 7, 2], [8, 2], [9, 10, 11, 12]]  # stop id 2; the third is cut at 4 tokens
    scores = [1.0, 0.0, 0.5]

    def fixed(completions, **kwargs):
        return scores[: len(completions)]

    grpo = GRPO(generator=lambda ids, greedy, seeds: completions[: len(ids)], tokenizer=tokenizer, stop_ids=[2],
                reward_funcs=[RewardFunction.wrap("fixed", fixed)], reward_weights=[1.0], num_generations=3,
                beta=0.7, epsilon=0.2, epsilon_high=0.2, loss_type="grpo", scale_rewards="group", temperature=1.0,
                max_completion_length=4, missing_eos_penalty=None, forward_batch_size=4, needs_old_logprobs=False,
                frozen_reference=reference, kl_in_reward=True, kl_reward_reduction="mean")
    prompt = [3, 4]
    experience, metrics, _ = grpo.experience(model, [EncodedPrompt(messages=[{"role": "user", "content": "hi"}],
                                                                   ids=prompt, extras={})])
    kl = torch.stack([(completion_logprobs_by_hand(model, prompt, c)
                       - completion_logprobs_by_hand(reference, prompt, c)).mean() for c in completions])
    rewards = torch.tensor(scores) - 0.7 * kl
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    assert kl.abs().min() > 1e-3  # the reference differs, so the KL term moves the advantages
    assert experience["advantages"].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    assert metrics["kl"] == pytest.approx(kl.mean().item(), abs=1e-5)
    assert metrics["reward"] == pytest.approx(sum(scores) / 3)  # the functions' score, as ms-swift logs it


def test_kl_reward_reduction_needs_the_kl_in_the_reward(tiny_model_dir, tmp_path, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--kl_reward_reduction", "mean",
                 "--output_dir", str(tmp_path)]) != 0
    assert "--kl_reward_reduction mean reduces the KL taken off the reward" in capsys.readouterr().err


def test_cli_run_samples_each_step_at_the_annealed_temperature(tiny_model_dir, tmp_path, monkeypatch):
    from alignkit.algorithms.rollout import HFGenerator

    seen, original = [], HFGenerator.__call__

    def spy(self, prompts, **kwargs):
        if not kwargs.get("greedy"):  # not the final evaluation's greedy answers
            seen.append(self.temperature)
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(HFGenerator, "__call__", spy)
    out = tmp_path / "out"
    # Two optimizer steps per step (4 completions, a mini-batch of 4, 2 passes; --max_steps counts optimizer steps,
    # as ms-swift's): step k samples after 2k of them.
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, *COMMON, "--max_steps", "8",
                 "--num_iterations", "2", "--temperature", "1.0", "--final_temperature", "0.5",
                 "--temperature_hold_steps", "1", "--temperature_annealing_steps", "5", "--output_dir", str(out)]) == 0
    expected = [1.0, 1.0 - (2 / 5) * 0.5, 1.0 - (4 / 5) * 0.5, 0.5]  # s = 0, 2, 4, 6
    assert seen == pytest.approx(expected)
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [r["temperature"] for r in logged if "temperature" in r] == pytest.approx(expected)


def test_colossal_train_grpo_runs_with_kl_in_the_reward_and_annealing(tiny_model_dir, reward_dir, tmp_path):
    """ColossalChat's defaults (kl_coef 0.7, 1.0 → 0.9) on a short run: 12 episodes, held 2 steps, T1 from 6."""
    save = tmp_path / "grpo"
    assert main(["colossal", "train_grpo", "--pretrain", tiny_model_dir, "--rm_checkpoint_path", reward_dir,
                 "--prompt_dataset", str(DATA / "colossalchat_ppo_prompts.jsonl"),
                 "--num_episodes", "8", "--num_collect_steps", "1", "--experience_batch_size", "1",
                 "--num_generations", "2", "--train_batch_size", "2", "--accumulation_steps", "1",
                 "--num_update_steps", "1", "--max_seq_len", "4", "--mixed_precision", "bf16", "--plugin", "ddp",
                 "--save_path", str(save)]) == 0
    (run_dir,) = [p for p in save.iterdir() if p.name.startswith("v")]
    args = json.loads((run_dir / "args.json").read_text())
    assert (args["beta"], args["kl_in_reward"], args["kl_reward_reduction"]) == (0.7, True, "mean")
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    temperatures = [r["temperature"] for r in logged if "temperature" in r]
    # 8 episodes: W = int(8/6) = 1, A = int(8/2) = 4; one optimizer step per episode.
    assert temperatures == pytest.approx([1.0, 1.0, 1.0 - 0.5 * 0.1, 1.0 - 0.75 * 0.1, 0.9, 0.9, 0.9, 0.9])
    assert all("kl" in r for r in logged if "temperature" in r)


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.test_online_cli import build_tiny_reward_model

    return str(build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"),
                                       AutoTokenizer.from_pretrained(tiny_model_dir)))


def test_max_tokens_thinking_is_accepted_and_changes_nothing(caplog):
    """ColossalChat hands it to generate() among the model's keyword arguments, which nothing reads."""
    from alignkit.commands.colossal.run import parse_script
    from alignkit.commands.colossal.translate import translate

    base = ["train_grpo", "--pretrain", "m", "--prompt_dataset", "p", "--rm_checkpoint_path", "rm/modeling"]
    with caplog.at_level("INFO", logger="alignkit"):
        budgeted = translate(*parse_script([*base, "--max_tokens_thinking", "5"])).values
    assert budgeted == translate(*parse_script(base)).values
    assert "--max_tokens_thinking 5 has no effect" in caplog.text
