"""`--adapters DIR` without `--model` loads the base the adapter was trained on (its run's args.json, else its
adapter_config.json), in training and in infer/export, instead of the built-in model."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import save_random_lora

from alignkit.cli import main
from alignkit.models.load import adapter_base_model


def test_base_from_args_json_before_adapter_config(tiny_model_dir, tmp_path):
    adapter = Path(save_random_lora(tiny_model_dir, tmp_path / "run" / "checkpoint-5"))
    assert adapter_base_model(str(adapter)) == tiny_model_dir  # adapter_config.json's base_model_name_or_path
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "run" / "args.json").write_text(json.dumps({"model": tiny_model_dir}))
    assert adapter_base_model(str(adapter)) == tiny_model_dir  # the run directory's args.json
    (adapter / "args.json").write_text(json.dumps({"model_type": "qwen-7b-chat"}))  # ms-swift 2.x's spelling
    assert adapter_base_model(str(adapter)) == tiny_model_dir  # a path that exists wins over a hub id
    (tmp_path / "run" / "args.json").unlink()
    assert adapter_base_model(str(adapter)) == "Qwen/Qwen-7B-Chat"


def test_export_and_infer_take_the_adapters_base(tiny_model_dir, tmp_path):
    adapter = save_random_lora(tiny_model_dir, tmp_path / "adapter")
    merged = tmp_path / "merged"
    assert main(["export", "--adapters", adapter, "--merge_lora", "true", "--output_dir", str(merged)]) == 0
    assert json.loads((merged / "config.json").read_text())["hidden_size"] == 32  # the tiny model, not SmolLM2
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"query": "What is 1 + 2?"}) + "\n")
    result = tmp_path / "answers.jsonl"
    assert main(["infer", "--adapters", adapter, "--val_dataset", str(prompts), "--result_path", str(result),
                 "--max_new_tokens", "2"]) == 0
    assert len(result.read_text().splitlines()) == 1


def test_training_on_an_adapter_takes_its_base(tiny_model_dir, tmp_path):
    adapter = save_random_lora(tiny_model_dir, tmp_path / "adapter")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}?"},
                                                     {"role": "assistant", "content": str(a)}]}) + "\n"
                            for a in range(4)))
    out = tmp_path / "out"
    assert main(["sft", "--adapters", adapter, "--dataset", str(data), "--max_steps", "1", "--output_dir", str(out),
                 "--report_to", "none"]) == 0
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "args.json").read_text())["model"] == tiny_model_dir
