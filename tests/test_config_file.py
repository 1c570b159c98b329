"""A YAML/JSON config file as the first argument (`alignkit sft x.yaml --lr 1e-5`), with ms-swift's rules:
lists give several values, mappings one JSON value, an ENV block sets environment variables, flags after the
file win, and a bad file names the file and the key."""

from __future__ import annotations

import json
import logging
import os

import pytest

from alignkit.cli import build_parser, main, parse_command_line
from alignkit.errors import AlignkitError


def parse(argv: list[str]) -> dict:
    command, values, _ = parse_command_line(build_parser(), argv)
    return values


@pytest.fixture
def clean_env(monkeypatch):
    """Variables the tests' ENV blocks set, absent before and removed after each test."""
    for name in ("ALIGNKIT_TEST_ENV_A", "ALIGNKIT_TEST_ENV_B"):
        monkeypatch.setenv(name, "x")  # recorded as absent, so monkeypatch removes what the test sets
        monkeypatch.delenv(name)


def test_yaml_lists_dicts_booleans_and_numbers(tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(
        "model: some/model\n"
        "dataset:\n  - 'a.jsonl#500'\n  - b.jsonl\n"
        "columns: {question: query, answer: response}\n"
        "gradient_checkpointing: true\n"
        "dataset_shuffle: false\n"
        "learning_rate: 1e-4\n"
        "lora_rank: 16\n"
        "system: 'You are a helpful assistant.'\n"
    )
    values = parse(["sft", str(config)])
    assert values["model"] == "some/model"
    assert values["dataset"] == ["a.jsonl#500", "b.jsonl"]
    assert json.loads(values["columns"]) == {"question": "query", "answer": "response"}
    assert values["gradient_checkpointing"] is True and values["dataset_shuffle"] is False
    assert values["learning_rate"] == 1e-4 and values["lora_rank"] == 16
    assert values["system"] == "You are a helpful assistant."


def test_json_file_reads_the_same(tmp_path):
    config = tmp_path / "rlhf.json"
    config.write_text(json.dumps({"rlhf_type": "kto", "dataset": ["x.jsonl"], "columns": {"kto_tag": "label"},
                                  "gradient_checkpointing": True, "beta": 0.2}))
    values = parse(["rlhf", str(config)])
    assert values["rlhf_type"] == "kto" and values["dataset"] == ["x.jsonl"] and values["beta"] == 0.2
    assert json.loads(values["columns"]) == {"kto_tag": "label"} and values["gradient_checkpointing"] is True


def test_flags_after_the_file_win(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("learning_rate: 1e-4\ndataset: [a.jsonl, b.jsonl]\nbeta: 0.5\n")
    values = parse(["rlhf", str(config), "--lr", "1e-5", "--dataset", "c.jsonl"])
    assert values["learning_rate"] == 1e-5
    assert values["dataset"] == ["c.jsonl"]
    assert values["beta"] == 0.5  # not overridden: the file's value


def test_env_block_sets_variables_and_the_environment_wins(tmp_path, clean_env, monkeypatch, caplog):
    monkeypatch.setenv("ALIGNKIT_TEST_ENV_B", "from-shell")
    config = tmp_path / "cfg.yaml"
    config.write_text("ENV:\n  ALIGNKIT_TEST_ENV_A: 3\n  ALIGNKIT_TEST_ENV_B: from-file\nmax_steps: 2\n")
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        values = parse(["sft", str(config)])
    assert os.environ["ALIGNKIT_TEST_ENV_A"] == "3"
    assert os.environ["ALIGNKIT_TEST_ENV_B"] == "from-shell"
    assert "ALIGNKIT_TEST_ENV_B=from-file is not applied" in caplog.text
    assert values["max_steps"] == 2 and "ENV" not in values


def test_env_block_is_set_before_the_launcher_reads_it(tmp_path, clean_env, monkeypatch):
    # NPROC_PER_NODE from the file's ENV block starts torchrun with the file's flags expanded.
    import alignkit.training.launch as launch

    monkeypatch.setenv("NPROC_PER_NODE", "x")
    monkeypatch.delenv("NPROC_PER_NODE")
    launched = []
    monkeypatch.setattr(launch, "relaunch", lambda command: launched.append(command) or 0)
    config = tmp_path / "cfg.yaml"
    config.write_text("ENV:\n  NPROC_PER_NODE: 2\ndataset: [d.jsonl]\n")
    assert main(["sft", str(config), "--max_steps", "3"]) == 0
    (command,) = launched
    assert command[command.index("--nproc_per_node") + 1] == "2"
    assert command[-5:] == ["sft", "--dataset", "d.jsonl", "--max_steps", "3"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("dataset: [a.jsonl]\nlerning_rate: 1e-4\n", "key 'lerning_rate': unknown flag --lerning_rate for "
                                                     "`alignkit sft`; did you mean --learning_rate?"),
        ("max_steps:\n", "key 'max_steps' has no value (null); remove the key to keep the flag's default"),
        ("ENV: [A, B]\n", "key 'ENV': expected a mapping of environment variables to values, got list"),
        ("- a\n- b\n", "expected a mapping of flag names to values at the top, got list"),
        ("dataset: [a.jsonl\n", "invalid YAML at line 2, column 1"),
        ("hqq_axis: 1\n", "key 'hqq_axis': --hqq_axis is not supported by alignkit"),
    ],
)
def test_a_bad_file_names_the_file_and_the_key(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(AlignkitError) as info:
        parse(["sft", str(config)])
    assert str(info.value).startswith(f"config file {config}: ")
    assert message in str(info.value)


def test_missing_and_malformed_json_files_are_named(tmp_path, capsys):
    assert main(["sft", str(tmp_path / "none.yaml")]) == 2
    assert f"config file {tmp_path / 'none.yaml'}: cannot read it" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"max_steps": 2,}')
    assert main(["rlhf", str(broken)]) == 2
    assert f"config file {broken}: invalid JSON" in capsys.readouterr().err


def test_config_file_trains_and_the_command_line_overrides_it(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"{a} + 1?"}, {"role": "assistant", "content": str(a + 1)}],
             "rejected_response": str(a + 2)} for a in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"model": tiny_model_dir, "dataset": [str(data)], "max_steps": 1,
                                  "learning_rate": 1e-4, "output_dir": str(tmp_path / "out"),
                                  "report_to": ["none"], "lora_target_modules": ["q_proj", "v_proj"]}))
    assert main(["rlhf", str(config), "--lr", "1e-5"]) == 0
    (run_dir,) = (tmp_path / "out").iterdir()
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["learning_rate"] == 1e-5 and saved["lora_target_modules"] == ["q_proj", "v_proj"]
    assert saved["model"] == tiny_model_dir and (run_dir / "checkpoint-1").is_dir()
