"""Online RL on several processes trains one model: 2 processes × B prompts equal 1 process × 2B prompts
(losses per step and final weights), with one run directory written by rank 0 only. And the engines: what
ppo/grpo can run on is decided by the same runner code as offline, and what cannot work stops with an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import free_port, launch, wait
from test_online_cli import PLUGIN, build_tiny_reward_model

from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.data.order import DataOrder
from alignkit.training.online_loop import sampling_seeds, step_prompts
from alignkit.training.runner import start_run

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--dataset",
    "arith-prompts#8",
    "--max_completion_length",
    "6",
    "--logging_steps",
    "1",
    "--report_to",
    "none",
    "--dtype",
    "fp32",
    "--learning_rate",
    "1e-2",
    "--max_steps",
    "2",
    "--save_steps",
    "100",
    "--temperature",
    "1.0",
]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "rewards.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    return str(
        build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), AutoTokenizer.from_pretrained(tiny_model_dir))
    )


def method_args(method: str, model: str, out: Path, plugin: Path, reward_model: str) -> list[str]:
    head = ["rlhf", "--rlhf_type", method, "--model", model, "--output_dir", str(out), *COMMON]
    if method == "grpo":
        return [*head, "--external_plugins", str(plugin), "--reward_funcs", "length_reward", "--num_generations", "2"]
    return [*head, "--reward_model", reward_model, "--num_ppo_epochs", "2"]


def records(out: Path) -> list[dict]:
    (run_dir,) = out.iterdir()
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    (run_dir,) = out.iterdir()
    weights = load_file(run_dir / "checkpoint-2" / "adapter_model.safetensors")
    value = run_dir / "checkpoint-2" / "value_model" / "adapter_model.safetensors"
    if value.exists():
        weights.update({f"value.{k}": v for k, v in load_file(value).items()})
    return weights


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_two_processes_of_b_prompts_train_like_one_process_of_2b(tiny_model_dir, plugin, reward_model_dir, tmp_path,
                                                                  method):
    # One process: 4 completions per step in micro-batches of 2 (GRPO: 2 prompts × 2; PPO: 4 prompts).
    # Two processes: 2 completions each, one micro-batch each: the same micro-batches, split across processes.
    one = method_args(method, tiny_model_dir, tmp_path / "one", plugin, reward_model_dir)
    assert main([*one, "--batch_size", "2", "--gradient_accumulation_steps", "2"]) == 0
    two = method_args(method, tiny_model_dir, tmp_path / "two", plugin, reward_model_dir)
    log = tmp_path / "two.log"
    wait(launch([*two, "--batch_size", "2"], log, NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)

    single, double = records(tmp_path / "one"), records(tmp_path / "two")
    losses = [[r["loss"] for r in rs if "loss" in r] for rs in (single, double)]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], abs=1e-4)
    assert [r["reward"] for r in double if "reward" in r] == pytest.approx(
        [r["reward"] for r in single if "reward" in r], abs=1e-4
    )
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0, msg=key)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it did train
    # Rank 0 alone wrote: one run directory, one record per step, completions logged once per completion.
    (run_dir,) = (tmp_path / "two").iterdir()
    assert [r["step"] for r in double if "loss" in r] == [1, 2]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    samples = (run_dir / "completions.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 2  # rank 0's own 2 completions per step


def test_a_group_split_across_two_processes_trains_like_one_process(tiny_model_dir, plugin, reward_model_dir,
                                                                     tmp_path):
    """ms-swift's generation batch: 2 processes × 2 completions hold one group of 4, each process sampling half of
    it; the advantages see the whole group, so the run equals one process sampling the group whole."""
    args = [*method_args("grpo", tiny_model_dir, tmp_path / "one", plugin, reward_model_dir), "--num_generations", "4"]
    assert main([*args, "--batch_size", "2", "--gradient_accumulation_steps", "2"]) == 0
    two = [*method_args("grpo", tiny_model_dir, tmp_path / "two", plugin, reward_model_dir), "--num_generations", "4"]
    log = tmp_path / "two.log"
    wait(launch([*two, "--batch_size", "2"], log, NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    single, double = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["loss"] for r in double if "loss" in r] == pytest.approx([r["loss"] for r in single if "loss" in r],
                                                                       abs=1e-4)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0, msg=key)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)


def test_each_prompt_samples_from_its_own_seed_whatever_process_or_batch_it_lands_in():
    assert sampling_seeds(42, 3, [5, 9]) == sampling_seeds(42, 3, [7, 5, 9])[1:]
    assert len(set(sampling_seeds(42, 3, range(100)) + sampling_seeds(42, 4, range(100)))) == 200
    # A short last step is filled from the epoch's start: every step has the same number of prompts.
    steps = step_prompts(DataOrder(10, 4, seed=0, shuffle=True), 0)
    assert [len(s) for s in steps] == [4, 4, 4] and sorted(sum(steps, [])[:10]) == list(range(10))
    # --dataloader_drop_last: the short last step is dropped instead.
    assert step_prompts(DataOrder(10, 4, seed=0, shuffle=True, drop_last=True), 0) == steps[:2]


def test_seeded_rollouts_do_not_depend_on_the_batch(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.algorithms.rollout import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[1, 2, 3, 4], [5, 6], [1, 2, 3, 4], [7, 8, 9]]
    seeds = [11, 22, 33, 44]

    def generator(batch_size: int) -> HFGenerator:
        return HFGenerator(model, pad_id=0, stop_ids=[2], max_new_tokens=8, temperature=1.0, batch_size=batch_size)

    together = generator(4)(prompts, seeds=seeds)
    apart = [generator(1)([p], seeds=[s])[0] for p, s in zip(prompts, seeds)]
    assert together == apart
    assert together[0] != together[2]  # the same prompt with two seeds: two draws
    assert generator(4)(prompts, seeds=seeds) == together  # and the same seeds draw the same again


def test_the_seeded_sampler_draws_from_the_tempered_softmax():
    from alignkit.algorithms.rollout import PerRowSampler

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    counts = torch.zeros(4)
    for seed in range(4000):
        counts[PerRowSampler([seed], temperature=0.7)(None, logits).argmax()] += 1
    expected = torch.softmax(logits[0] / 0.7, -1)
    torch.testing.assert_close(counts / counts.sum(), expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_deepspeed_for_online_rl_is_configured_by_the_offline_runner_code(method, monkeypatch):
    import alignkit.training.runner as runner

    monkeypatch.setattr(runner, "check_available", lambda engine: None)  # no GPU or deepspeed here
    start = start_run(RunArguments(rlhf_type=method, deepspeed="zero3", per_device_train_batch_size=2))
    assert start.engine.kind == "deepspeed"
    assert start.engine.deepspeed_config["zero_optimization"]["stage"] == 3
    assert start.engine.deepspeed_config["train_micro_batch_size_per_gpu"] == 2


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_fsdp_for_online_rl_stops_with_an_error_naming_it(tiny_model_dir, method, monkeypatch, capsys):
    import alignkit.training.runner as runner

    monkeypatch.setattr(runner, "check_available", lambda engine: None)
    extra = ["--reward_funcs", "arith_accuracy"] if method == "grpo" else []
    assert main(["rlhf", "--rlhf_type", method, "--model", tiny_model_dir, "--fsdp", "true", *extra]) == 2
    err = capsys.readouterr().err
    assert f"--fsdp with --rlhf_type {method}" in err and "--deepspeed zero2 or zero3" in err


def test_vllm_on_several_processes_takes_an_engine_each(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("alignkit.training.online_run.start_run", lambda args, method=None: type(
        "S", (), {"engine": None, "check_engine": lambda self: None})())
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--reward_funcs", "arith_accuracy",
                 "--use_vllm", "true"]) == 2
    err = capsys.readouterr().err
    assert "--use_vllm needs" in err and "several processes" not in err  # only vllm and a GPU are missing here


UNEVEN_TURNS = '''
from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns


class Uneven(MultiTurnScheduler):
    """Ends after one or two turns, by the answer's tokens (turns cut at the length limit go on too): processes
    finish their trajectories at different turns."""

    def check_finished(self, infer_request, response_choice, current_turn):
        return current_turn > sum(response_choice.token_ids) % 2

    def step(self, infer_request, response_choice, current_turn):
        infer_request.messages.append({"role": "user", "content": "More."})
        return {"infer_request": infer_request}


multi_turns["uneven"] = Uneven
'''


def test_multi_turn_on_two_processes_trains_like_one(tiny_model_dir, plugin, reward_model_dir, tmp_path):
    """Multi-turn rollouts whose trajectories end at different turns on each process: every process takes part in
    each turn while any goes on, and the run equals one process sampling all of it (seeds per completion)."""
    scheduler = tmp_path / "uneven.py"
    scheduler.write_text(UNEVEN_TURNS)
    turns = ["--multi_turn_scheduler", "uneven", "--max_turns", "3"]
    one = method_args("grpo", tiny_model_dir, tmp_path / "one", plugin, reward_model_dir)
    one[one.index("--external_plugins") + 1: one.index("--external_plugins") + 2] = [str(plugin), str(scheduler)]
    assert main([*one, *turns, "--batch_size", "2", "--gradient_accumulation_steps", "2"]) == 0
    two = [str(tmp_path / "two") if a == str(tmp_path / "one") else a for a in one]
    log = tmp_path / "two.log"
    wait(launch([*two, *turns, "--batch_size", "2"], log, NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    single, double = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["loss"] for r in double if "loss" in r] == pytest.approx([r["loss"] for r in single if "loss" in r],
                                                                       abs=1e-4)
    (run_dir,) = (tmp_path / "one").iterdir()
    assert "More." in (run_dir / "completions.jsonl").read_text()  # some trajectories did take a second turn
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0, msg=key)
