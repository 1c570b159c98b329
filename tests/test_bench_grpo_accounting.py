"""The GRPO benchmark's fair-work check (bench/grpo_accounting.py) and its shared rewards (bench/peers/grpo_reward.py):
a run is compared only when every step sampled the benchmark's prompts, G completions of each, within the length
limit, and trained them in one optimizer step; anything else is refused with what differs. The rewards give the
values their docstring documents, and the record of the rewards says which groups had a nonzero advantage.

The alignkit side is a real 2-step run on the tiny model with the benchmark's reward file; the TRL side is the
record bench/peers/trl_grpo.py writes (its environment, bench/.venvs, is not built in CI).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "peers"))

from accounting import AccountingError  # noqa: E402
from grpo_accounting import (  # noqa: E402
    GrpoConfigured,
    GrpoWork,
    from_alignkit_grpo,
    from_trl_grpo,
    read_reward_log,
    verify_grpo,
)
from grpo_reward import arith_partial_reward, arith_reward  # noqa: E402
from grpo_run import reward_signal  # noqa: E402

WORK = GrpoWork(prompts=[["What is 1 + 2?", "What is 5 - 3?"], ["What is 7 + 1?", "What is 9 - 4?"]],
                num_generations=2, max_completion_length=8)
CONFIGURED = GrpoConfigured(optimizer_steps=2, completions_per_optimizer_step=4, completions_per_generation=4,
                            num_generations=2, max_completion_length=8, update_epochs=1)


def calls(lengths=(3, 8, 5, 1)) -> list[dict]:
    # Each step's prompts twice, in an order of the framework's own (the check compares the multiset).
    return [{"completions": 4, "prompts": [p for p in reversed(step) for _ in range(2)], "lengths": list(lengths)}
            for step in WORK.prompts]


def test_equal_work_is_accepted():
    assert WORK.completions_per_step == 4
    assert verify_grpo(CONFIGURED, calls(), WORK, who="peer") == 4


@pytest.mark.parametrize("change, message", [
    ({"completions_per_optimizer_step": 2}, "completions per optimizer step is 2, the benchmark's is 4"),
    ({"completions_per_generation": 8}, "completions per generation is 8"),
    ({"num_generations": 4}, "num_generations is 4"),
    ({"max_completion_length": 16}, "max_completion_length is 16"),
    ({"update_epochs": 2}, "update passes per generation is 2"),
    ({"optimizer_steps": 3}, "optimizer steps logged is 3"),
])
def test_a_differently_configured_run_is_refused(change, message):
    with pytest.raises(AccountingError, match=message):
        verify_grpo(replace(CONFIGURED, **change), calls(), WORK, who="peer")


def test_a_step_that_sampled_other_work_is_refused():
    records = calls()
    with pytest.raises(AccountingError, match="called 1 times for 2 steps"):
        verify_grpo(CONFIGURED, records[:1], WORK, who="peer")
    short = [records[0], {**records[1], "completions": 2}]
    with pytest.raises(AccountingError, match="step 2 scored 2 completions"):
        verify_grpo(CONFIGURED, short, WORK, who="peer")
    swapped = [records[1], records[0]]
    with pytest.raises(AccountingError, match="step 1 sampled other prompts"):
        verify_grpo(CONFIGURED, swapped, WORK, who="peer")
    with pytest.raises(AccountingError, match="completion of 9 tokens, over max_completion_length 8"):
        verify_grpo(CONFIGURED, calls(lengths=(9, 1, 1, 1)), WORK, who="peer")


def test_trl_record_is_read_as_written():
    record = {"optimizer_steps": 2, "completions_per_optimizer_step": 4, "completions_per_generation": 4,
              "num_generations": 2, "max_completion_length": 8, "update_epochs": 1}
    assert from_trl_grpo(record) == CONFIGURED


def test_the_reward_scores_both_frameworks_completions_alike_and_records_the_call(tmp_path, monkeypatch):
    log = tmp_path / "rewards.jsonl"
    monkeypatch.setenv("BENCH_REWARD_LOG", str(log))
    prompt = [{"role": "user", "content": "What is 1 + 2?"}]
    as_text = arith_reward(["Answer: 3", "Answer: 4", "It is 3"], solution=["3", "3", "3"], prompts=[prompt] * 3,
                           response_token_ids=[[1, 2], [1], [1, 2, 3]])
    as_messages = arith_reward([[{"role": "assistant", "content": "Answer:3"}]], solution=["3"], prompts=[prompt],
                               completion_ids=[[5, 6, 7, 8]])
    assert (as_text, as_messages) == ([1.0, 0.0, 0.0], [1.0])
    assert read_reward_log(log) == [
        {"completions": 3, "prompts": ["What is 1 + 2?"] * 3, "lengths": [2, 1, 3], "rewards": [1.0, 0.0, 0.0]},
        {"completions": 1, "prompts": ["What is 1 + 2?"], "lengths": [4], "rewards": [1.0]},
    ]


# The table of bench/peers/grpo_reward.py's docstring (solution 60), and what the "last number" is.
PARTIAL = [
    ("Answer: 60", 1.0),  # the asked-for form, correct
    ("22 + 38 = 60", 0.5),  # the solution, not in the asked-for form
    ("22 + 38 = 61.5", 0.5 / 2.5),
    ("Answer: 59", 0.5 / 2),  # wrong in the asked-for form: credit for the distance only
    ("22 + 38 = 79", 0.5 / 20),
    ("I cannot say.", 0.0),  # no number
    ("It is 60, not 98-38", 0.5 / 23),  # the last number, 38: the "-" of "98-38" is the operator
    ("It is -60", 0.5 / 121),
]


def test_the_partial_reward_gives_its_documented_values_and_records_them(tmp_path, monkeypatch):
    log = tmp_path / "rewards.jsonl"
    monkeypatch.setenv("BENCH_REWARD_LOG", str(log))
    texts, expected = zip(*PARTIAL)
    prompt = [{"role": "user", "content": "What is 22 + 38?"}]
    got = arith_partial_reward(list(texts), solution=["60"] * len(texts), prompts=[prompt] * len(texts),
                               response_token_ids=[[1]] * len(texts))
    assert got == pytest.approx(list(expected), abs=1e-12)
    as_messages = arith_partial_reward([[{"role": "assistant", "content": "Answer:60"}]], solution=["60"],
                                       prompts=[prompt], completion_ids=[[5, 6]])
    assert as_messages == [1.0]
    # One record per call, with the rewards (the benchmark passes one function, so a step is one record).
    records = read_reward_log(log)
    assert [r["completions"] for r in records] == [len(texts), 1]
    assert records[0]["rewards"] == got and records[1]["rewards"] == [1.0]


def test_the_reward_record_says_which_groups_had_a_nonzero_advantage():
    # Two steps of 2 prompts × 2 completions; a group is a step's completions of one prompt, in any order.
    calls = [{"prompts": ["a", "b", "a", "b"], "rewards": [0.5, 0.1, 0.25, 0.1]},
             {"prompts": ["c", "c", "d", "d"], "rewards": [0.0, 0.0, 1.0, 0.0]}]
    assert reward_signal(calls) == {"mean_reward": pytest.approx(1.95 / 8), "groups": 4, "groups_with_signal": 2}
    # The 0/1 accuracy on completions the base model writes: no signal anywhere; the partial credit has it.
    texts, solutions = ["The answer is 30.", "55 + 48 equals 24.", "80 + 73 = 157", "62 + 71 = 159"], ["55"] * 4
    for reward, signal in ((arith_reward, 0), (arith_partial_reward, 1)):
        rewards = reward(texts, solution=solutions, prompts=["p"] * 4)
        assert reward_signal([{"prompts": ["p"] * 4, "rewards": rewards}])["groups_with_signal"] == signal


def test_alignkit_run_is_read_back_from_its_log_args_and_reward_record(tiny_model_dir, tmp_path, monkeypatch, caplog):
    from alignkit.cli import main

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": str(i + 1)} for i in range(4)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("BENCH_REWARD_LOG", str(tmp_path / "rewards.jsonl"))
    with caplog.at_level("INFO", logger="alignkit"):
        assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", str(data),
                     "--dataset_shuffle", "false", "--reward_funcs", f"{ROOT}/bench/peers/grpo_reward.py:arith_reward",
                     "--num_generations", "2", "--per_device_train_batch_size", "4", "--max_completion_length", "6",
                     "--beta", "0", "--dtype", "fp32", "--max_steps", "2", "--logging_steps", "1",
                     "--save_steps", "1000", "--report_to", "none", "--output_dir", str(tmp_path / "out")]) == 0
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    configured = from_alignkit_grpo(run_dir, caplog.text)
    assert configured == GrpoConfigured(optimizer_steps=2, completions_per_optimizer_step=4,
                                        completions_per_generation=4, num_generations=2, max_completion_length=6,
                                        update_epochs=1)
    work = GrpoWork([[r["prompt"][0]["content"] for r in rows[i : i + 2]] for i in (0, 2)], 2, 6)
    assert verify_grpo(configured, read_reward_log(tmp_path / "rewards.jsonl"), work, who="alignkit") == 4
    with pytest.raises(AccountingError, match="max_completion_length is 6, the benchmark's is 8"):
        verify_grpo(configured, read_reward_log(tmp_path / "rewards.jsonl"), replace(work, max_completion_length=8),
                    who="alignkit")
