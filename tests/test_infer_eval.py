"""`alignkit infer --load_dataset_config` answers exactly a run's held-out rows with its system prompt;
`alignkit eval` writes its JSON report and a PNG chart, never over an existing one."""

from __future__ import annotations

import json
import random

import pytest

from alignkit.cli import main

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"Answer: {a + b}"},
        ],
        "rejected_response": f"Answer: {a + b + 1}",
    }
    for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)]
]


@pytest.fixture(scope="module")
def run_checkpoint(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert main(["rlhf", "--model", tiny_model_dir, "--dataset", str(data), "--split_dataset_ratio", "0.25",
                 "--system", "Be brief.", "--max_steps", "1", "--output_dir", str(root / "out"), "--report_to", "none",
                 "--dtype", "fp32"]) == 0
    (checkpoint,) = (root / "out").glob("v0-*/checkpoint-1")
    return checkpoint, data


def test_load_dataset_config_answers_the_runs_held_out_rows_with_its_system_prompt(run_checkpoint, tmp_path, caplog):
    from alignkit.data.loading import split_rows
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    checkpoint, data = run_checkpoint
    result = tmp_path / "answers.jsonl"
    with caplog.at_level("INFO", logger="alignkit"):
        assert main(["infer", "--ckpt_dir", str(checkpoint), "--load_dataset_config", "true", "--max_new_tokens", "6",
                     "--result_path", str(result), "--dtype", "fp32"]) == 0
    lines = [json.loads(line) for line in result.read_text().splitlines()]

    # The same 2 of 8 rows training held out (ceil(0.25 * 8)), with the split's own seed.
    _, held_out = split_rows(ROWS, 0.25, random.Random(f"42:split:{data}"))
    assert [line["messages"][-1]["content"] for line in lines] == [r["messages"][0]["content"] for r in held_out]
    assert [line["labels"] for line in lines] == [r["messages"][1]["content"] for r in held_out]

    model, tokenizer = load_for_inference(None, [], str(checkpoint), "fp32")
    encoder = ChatEncoder(tokenizer, max_length=1024, system="Be brief.")
    expected = generate_answers(model, encoder, [line["messages"] for line in lines], max_new_tokens=6)
    assert [line["response"] for line in lines] == expected
    assert any("answers/s" in r.getMessage() and "tokens/s" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("--load_dataset_config: system, max_length, held-out rows from")
               for r in caplog.records)


def test_load_dataset_config_needs_a_run_checkpoint(tiny_model_dir, capsys):
    assert main(["infer", "--model", tiny_model_dir, "--load_dataset_config", "true"]) == 2
    assert "needs --ckpt_dir" in capsys.readouterr().err


def test_vllm_backend_says_what_it_needs(run_checkpoint, tmp_path, capsys):
    checkpoint, _ = run_checkpoint
    code = main(
        [
            "infer",
            "--ckpt_dir",
            str(checkpoint),
            "--infer_backend",
            "vllm",
            "--val_dataset",
            "arith-prompts:test#2",
            "--result_path",
            str(tmp_path / "a.jsonl"),
        ]
    )
    err = capsys.readouterr().err
    try:
        import torch
        import vllm  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("vLLM and a GPU are here: the backend runs instead of refusing")
    except ModuleNotFoundError:
        pass
    assert code == 2 and ("needs the vllm package" in err or "needs a CUDA GPU" in err)


def test_eval_writes_a_json_report_and_a_png_chart_and_never_overwrites(run_checkpoint, tmp_path, capsys):
    checkpoint, data = run_checkpoint
    report_path = tmp_path / "report.json"
    argv = ["eval", "--ckpt_dir", str(checkpoint), "--dataset", str(data), "--task_dataset", "arith-prompts:test",
            "--limit", "4", "--max_new_tokens", "4", "--report_path", str(report_path), "--dtype", "fp32"]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    scores = report[str(data)]
    assert scores["pairs"] == 4 and 0 <= scores["preference_accuracy"] <= 1 and "reward_margin" in scores
    assert report["arith-prompts:test"]["prompts"] == 4
    chart = report_path.with_suffix(".png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5_000
    capsys.readouterr()
    assert main(argv) == 2
    assert "never overwrites" in capsys.readouterr().err


def test_interactive_chat_streams_multi_turn_answers_with_the_system_prompt(tiny_chat_model_dir, monkeypatch, capsys):
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    typed = iter(["What is 12 + 30?", "And 5 + 6?", "clear", "And 5 + 6?", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert main(["infer", "--model", tiny_chat_model_dir, "--system", "Be brief.", "--max_new_tokens", "6",
                 "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    answers = [piece.removesuffix("\n") for piece in printed.split(">>> ")[1:]]  # input() is patched: no "<<< "

    model, tokenizer = load_for_inference(tiny_chat_model_dir, [], None, "fp32")
    encoder = ChatEncoder(tokenizer, max_length=1024, system="Be brief.")
    first = generate_answers(model, encoder, [[{"role": "user", "content": "What is 12 + 30?"}]], max_new_tokens=6)[0]
    second = generate_answers(model, encoder, [[
        {"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "And 5 + 6?"}]], max_new_tokens=6)[0]
    fresh = generate_answers(model, encoder, [[{"role": "user", "content": "And 5 + 6?"}]], max_new_tokens=6)[0]
    assert second != fresh  # the history matters, and `clear` forgets it
    assert answers == [first, second, fresh]


def test_eval_reward_model_win_rate_of_an_adapter_against_its_base(tiny_model_dir, tiny_chat_model_dir, tmp_path):
    from conftest import save_random_lora

    from alignkit.data.loading import load_dataset_spec
    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference
    from alignkit.models.reward_model import load_reward_model

    out = tmp_path / "rm"
    assert (
        main(
            [
                "rlhf",
                "--rlhf_type",
                "rm",
                "--model",
                tiny_model_dir,
                "--dataset",
                "arith-pref#4",
                "--val_dataset",
                "arith-pref:test#2",
                "--max_steps",
                "2",
                "--batch_size",
                "2",
                "--learning_rate",
                "1e-2",
                "--output_dir",
                str(out),
                "--report_to",
                "none",
                "--dtype",
                "fp32",
            ]
        )
        == 0
    )
    (reward_model,) = out.glob("v0-*/checkpoint-2")
    adapter = save_random_lora(tiny_chat_model_dir, tmp_path / "adapter")
    report_path = tmp_path / "report.json"
    assert main(["eval", "--model", tiny_chat_model_dir, "--adapters", adapter, "--reward_model", str(reward_model),
                 "--dataset", "none", "--task_dataset", "none", "--limit", "6", "--max_new_tokens", "5",
                 "--report_path", str(report_path), "--dtype", "fp32"]) == 0
    scores = json.loads(report_path.read_text())["arith-prompts:test (reward model)"]

    # The same numbers by hand: both models' greedy answers, scored one by one.
    prompts = [r.prompt for r in load_dataset_spec("arith-prompts:test", "prompt", seed=42)[:6]]
    scorer = load_reward_model(str(reward_model), dtype="fp32")
    rewards = {}
    for name, adapters in (("model", [adapter]), ("base", [])):
        model, tokenizer = load_for_inference(tiny_chat_model_dir, adapters, None, "fp32")
        answers = generate_answers(model, ChatEncoder(tokenizer, max_length=1024), prompts, max_new_tokens=5)
        rewards[name] = scorer.score([p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)])
    wins = sum((m > b) + 0.5 * (m == b) for m, b in zip(rewards["model"], rewards["base"]))
    assert scores["prompts"] == 6 and scores["win_rate"] == pytest.approx(wins / 6)
    assert scores["reward_margin"] == pytest.approx(
        sum(m - b for m, b in zip(rewards["model"], rewards["base"])) / 6, abs=1e-5)
    assert report_path.with_suffix(".png").is_file()
