"""ms-swift's infer flags: --load_data_args with --adapters, --dataset with --split_dataset_ratio, --stop_words,
--write_batch_size, --truncation_strategy, --infer_backend pt|sglang|lmdeploy, a reward model given as --model,
--trust_remote_code; and deploy/app refusing lmdeploy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import save_random_lora

from alignkit.cli import main
from alignkit.errors import AlignkitError

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": f"Answer: {a + b}"}]}
        for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)]]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def infer(*argv) -> int:
    return main(["infer", "--dtype", "fp32", "--max_new_tokens", "6", *map(str, argv)])


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dataset_with_split_ratio_answers_the_held_out_rows_training_would_hold_out(tiny_chat_model_dir, data,
                                                                                    tmp_path):
    from alignkit.data.loading import split_rows

    out = tmp_path / "held.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--dataset", data, "--split_dataset_ratio", "0.25",
                 "--result_path", out) == 0
    _, held_out = split_rows(ROWS, 0.25, random.Random(f"42:split:{data}"))
    assert [r["messages"][-1]["content"] for r in results(out)] == [r["messages"][0]["content"] for r in held_out]
    assert [r["labels"] for r in results(out)] == [r["messages"][1]["content"] for r in held_out]
    every = tmp_path / "all.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--dataset", data, "--result_path", every) == 0
    assert len(results(every)) == len(ROWS)


def test_load_data_args_reads_the_adapters_run(tiny_chat_model_dir, data, tmp_path, caplog):
    adapter = Path(save_random_lora(tiny_chat_model_dir, tmp_path / "adapter"))
    (adapter / "args.json").write_text(json.dumps({"model": tiny_chat_model_dir, "dataset": [str(data)],
                                                   "split_dataset_ratio": 0.25, "system": "Be brief."}))
    out = tmp_path / "a.jsonl"
    with caplog.at_level("INFO", logger="alignkit"):
        assert infer("--adapters", adapter, "--load_data_args", "true", "--result_path", out) == 0
    assert len(results(out)) == 2  # ceil(0.25 * 8) held-out rows
    assert any("--load_dataset_config: system, held-out rows from" in r.getMessage() for r in caplog.records)


def test_stop_words_cut_the_answer_before_them(tiny_chat_model_dir, data, tmp_path):
    plain = tmp_path / "plain.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", plain,
                 "--max_new_tokens", "12") == 0
    answer = results(plain)[0]["response"]
    stop = answer[len(answer) // 2 : len(answer) // 2 + 2]
    cut = tmp_path / "cut.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", cut, "--max_new_tokens", "12",
                 "--stop_words", stop) == 0
    assert results(cut)[0]["response"] == answer[: answer.find(stop)]


def test_write_batch_size_flushes_rows_as_they_are_answered(tmp_path):
    from alignkit.commands.infer import write_answers
    from alignkit.config.commands import InferArguments
    from alignkit.data.rows import PromptRow

    class Tokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text)}

    rows = [(PromptRow([{"role": "user", "content": str(i)}], {}, None), [1, 2]) for i in range(6)]

    def on_disk_when_answering(write_batch_size: int) -> list[int]:
        path, seen = tmp_path / f"w{write_batch_size}.jsonl", []

        def answer(chunk):
            seen.append(len(path.read_text().splitlines()))
            return ["x"] * len(chunk)

        args = InferArguments(max_batch_size=2, write_batch_size=write_batch_size)
        write_answers(answer, Tokenizer(), rows, args, path)
        assert len(results(path)) == 6
        return seen

    assert on_disk_when_answering(2) == [0, 2, 4]
    assert on_disk_when_answering(-1) == [0, 0, 0]


def test_truncation_strategy_of_long_prompts():
    from alignkit.commands.infer import fit_prompt

    ids = list(range(10))
    assert fit_prompt(ids, 4, "left", 0) == [6, 7, 8, 9]
    assert fit_prompt(ids, 4, "right", 0) == [0, 1, 2, 3]
    assert fit_prompt(ids, 4, "delete", 0) is None
    assert fit_prompt(ids, 10, "raise", 0) == ids
    with pytest.raises(AlignkitError, match="prompt 3: 10 tokens exceed --max_length 4"):
        fit_prompt(ids, 4, "raise", 3)


def test_pt_is_transformers_and_missing_engines_say_what_they_need(tiny_chat_model_dir, data, tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", a) == 0
    assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", b,
                 "--infer_backend", "pt") == 0
    assert results(a) == results(b)
    import importlib.util

    for backend in ("sglang", "lmdeploy"):
        if importlib.util.find_spec(backend) is not None:
            continue
        assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", tmp_path / f"{backend}",
                     "--infer_backend", backend) == 2
        assert f"--infer_backend {backend} needs the {backend} package" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["deploy", "app"])
def test_deploy_and_app_refuse_lmdeploy_before_loading(command, capsys):
    assert main([command, "--model", "/nonexistent", "--infer_backend", "lmdeploy"]) == 2
    assert f"{command} serves with transformers, vllm or sglang" in capsys.readouterr().err


def test_engine_flags_of_another_backend_are_reported(tiny_chat_model_dir, caplog):
    from alignkit.config.command_checks import check_command_arguments
    from alignkit.config.commands import InferArguments

    with caplog.at_level("WARNING", logger="alignkit"):
        check_command_arguments("infer", InferArguments(vllm_gpu_memory_utilization=0.5, vllm_enforce_eager=True))
    assert "--vllm_gpu_memory_utilization, --vllm_enforce_eager: no effect with --infer_backend transformers" in (
        caplog.text)


def test_vllm_flags_reach_the_engine():
    from alignkit.config.commands import InferArguments
    from alignkit.generation.vllm import vllm_engine_kwargs

    kwargs = vllm_engine_kwargs(InferArguments(vllm_gpu_memory_utilization=0.5, vllm_max_model_len=2048,
                                               vllm_tensor_parallel_size=2, vllm_enforce_eager=True,
                                               vllm_limit_mm_per_prompt='{"image": 5}'))
    assert kwargs == {"gpu_memory_utilization": 0.5, "max_model_len": 2048, "tensor_parallel_size": 2,
                      "enforce_eager": True, "enable_prefix_caching": False, "max_num_seqs": 256,
                      "limit_mm_per_prompt": {"image": 5}}


CUSTOM_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "alignkit_custom"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


def test_trust_remote_code_is_off_by_default_and_lets_custom_code_load(tiny_chat_model_dir, data, tmp_path, capsys):
    import shutil

    model = tmp_path / "custom"
    shutil.copytree(tiny_chat_model_dir, model)
    (model / "modeling_custom.py").write_text(CUSTOM_CODE)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="alignkit_custom", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    assert infer("--model", model, "--val_dataset", data, "--result_path", tmp_path / "no.jsonl") == 2
    assert "trust_remote_code" in capsys.readouterr().err
    out = tmp_path / "yes.jsonl"
    assert infer("--model", model, "--val_dataset", data, "--result_path", out, "--trust_remote_code", "true") == 0
    reference = tmp_path / "ref.jsonl"
    assert infer("--model", tiny_chat_model_dir, "--val_dataset", data, "--result_path", reference) == 0
    assert results(out) == results(reference)  # the same weights, loaded through the repository's class


def test_a_reward_model_given_to_infer_scores_the_pairs(tiny_model_dir, tmp_path, capsys):
    from alignkit.data.loading import load_dataset_spec
    from alignkit.models.reward_model import load_reward_model

    out = tmp_path / "rm"
    assert main(["rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#4", "--max_steps",
                 "1", "--batch_size", "2", "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32"]) == 0
    (checkpoint,) = out.glob("v0-*/checkpoint-1")
    scores = tmp_path / "scores.jsonl"
    assert infer("--adapters", checkpoint, "--val_dataset", "arith-pref:test#3", "--result_path", scores) == 0
    assert "pair accuracy (reward of chosen > rejected)" in capsys.readouterr().out
    rows = load_dataset_spec("arith-pref:test#3", "preference", seed=42)
    scorer = load_reward_model(str(checkpoint), dtype="fp32")
    expected = scorer.score([row.prompt + row.chosen for row in rows])
    assert [r["chosen_reward"] for r in results(scores)] == pytest.approx(expected, abs=1e-5)
    assert all("response" not in r for r in results(scores))  # scored, not chat-generated


@pytest.mark.parametrize("command", ["infer", "deploy", "export"])
def test_task_types_other_than_causal_lm_are_refused_naming_the_feature(command, capsys):
    assert main([command, "--model", "/nonexistent", "--task_type", "embedding"]) == 2
    assert f"--task_type embedding: `alignkit {command}` handles generative models" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["infer", "deploy", "app", "export"])
def test_adapters_alone_take_the_base_they_were_trained_on(command, tiny_chat_model_dir, tmp_path):
    from alignkit.cli import build_parser, parse_command_line, typed_arguments

    adapter = save_random_lora(tiny_chat_model_dir, tmp_path / "adapter")
    entry = f"named={adapter}" if command == "deploy" else adapter
    _, values, _ = parse_command_line(build_parser(), [command, "--adapters", entry])
    assert typed_arguments(command, values).model == tiny_chat_model_dir
