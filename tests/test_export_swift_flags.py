"""ms-swift's export flags: --bnb_4bit_*, the argument paths of --quant_method gptq|gptq_v2|awq|fp8 (calibration
data read, then a clear error without a CUDA GPU), --to_ollama, --push_to_hub through huggingface_hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": f"Answer: {a + b}"}]} for a, b in [(1, 2), (3, 4), (5, 6)]]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "calibration.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


@pytest.fixture(scope="module")
def model64_dir(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels quantise in blocks of 64 input features."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny64")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, hidden_size=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_bnb_4bit_options_reach_the_saved_quantisation_config(model64_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "fp4"
    assert main(["export", "--model", model64_dir, "--quant_method", "bnb", "--quant_bits", "4",
                 "--bnb_4bit_quant_type", "fp4", "--bnb_4bit_use_double_quant", "false", "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["bnb_4bit_quant_type"] == "fp4" and config["bnb_4bit_use_double_quant"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the methods run instead of refusing")
@pytest.mark.parametrize("method, bits", [("gptq", "4"), ("gptq_v2", "4"), ("awq", "4"), ("fp8", None)])
def test_gpu_methods_read_their_calibration_data_then_ask_for_a_gpu(tiny_model_dir, data, tmp_path, method, bits,
                                                                     capsys):
    argv = ["export", "--model", tiny_model_dir, "--quant_method", method, "--output_dir", str(tmp_path / "q")]
    argv += ["--quant_bits", bits] if bits else []
    calibrated = method != "fp8"
    if calibrated:  # a wrong --dataset is reported before the GPU is asked for
        assert main([*argv, "--dataset", str(tmp_path / "missing.jsonl")]) == 2
        assert "missing.jsonl" in capsys.readouterr().err
    assert main([*argv, *(["--dataset", str(data)] if calibrated else [])]) == 2
    assert f"--quant_method {method} needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_calibration_rows_are_rendered_conversations_within_max_length(tiny_model_dir, data):
    from transformers import AutoTokenizer

    from alignkit.commands.export_quant import calibration_ids
    from alignkit.config.commands import ExportArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = calibration_ids(ExportArguments(dataset=[str(data)], quant_n_samples=2, max_length=512), tokenizer)
    assert len(ids) == 2
    assert ids[0] == tokenizer.apply_chat_template(ROWS[0]["messages"], tokenize=True, return_dict=True)["input_ids"]
    cut = calibration_ids(ExportArguments(dataset=[str(data)], quant_n_samples=3, max_length=5,
                                          truncation_strategy="left"), tokenizer)
    assert [len(row) for row in cut] == [5, 5, 5] and cut[0] == ids[0][-5:]


@pytest.mark.parametrize("argv, message", [
    (["--quant_method", "gptq", "--quant_bits", "4"], "calibrates on data: pass --dataset"),
    (["--quant_method", "fp8", "--quant_bits", "8"], "leave out --quant_bits"),
    (["--quant_method", "awq", "--quant_bits", "8", "--dataset", "x"], "pass --quant_bits 4"),
    (["--quant_method", "bnb"], "needs --quant_bits 4 or 8"),
    (["--quant_bits", "4", "--dataset", "x"], "calibration data for --quant_method gptq"),
    (["--push_to_hub", "true", "--hub_model_id", "me/m"], "pass --use_hf true"),
    (["--push_to_hub", "true", "--use_hf", "true"], "needs --hub_model_id"),
    (["--to_cached_dataset", "true"], "--to_cached_dataset: alignkit tokenises and caches"),
    (["--to_cached_dataset", "true", "--split_dataset_ratio", "0.01"], "--to_cached_dataset: alignkit tokenises"),
    (["--dataset_num_proc", "8", "--num_labels", "2"], "--dataset_num_proc, --num_labels: export uses them only "
                                                        "with --to_cached_dataset"),
    (["--load_data_args", "true", "--quant_bits", "4"], "--load_data_args on export reads the calibration data"),
])
def test_export_flag_combinations_that_cannot_work_stop_before_loading(argv, message, capsys):
    assert main(["export", "--model", "/nonexistent", *argv]) == 2
    assert message in capsys.readouterr().err


def test_to_ollama_writes_a_modelfile_from_the_chat_template(tiny_model_dir, tmp_path):
    out = tmp_path / "ollama"
    assert main(["export", "--model", tiny_model_dir, "--to_ollama", "true", "--output_dir", str(out)]) == 0
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM {out.resolve()}\n")
    assert ('TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n'
            '{{ else }}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{{ end }}'
            '{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>"""\n') in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_push_to_hub_uploads_the_export_and_says_so_offline(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", Path(folder_path).name, repo_id, commit_message))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    argv = ["export", "--model", tiny_model_dir, "--to_ollama", "true", "--push_to_hub", "true", "--use_hf", "true",
            "--hub_model_id", "me/tiny", "--hub_token", "hf_x", "--hub_private_repo", "true"]
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    assert calls == [("token", "hf_x"), ("create", "me/tiny", True), ("upload", "a", "me/tiny", "update files")]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main([*argv, "--output_dir", str(tmp_path / "b")]) == 2
    assert "the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1)" in capsys.readouterr().err
    assert (tmp_path / "b" / "Modelfile").is_file()  # the export itself is kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the method runs instead of refusing")
def test_load_data_args_calibrates_on_the_runs_dataset(tiny_model_dir, data, tmp_path, capsys):
    import shutil

    model = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, model)
    argv = ["export", "--model", str(model), "--quant_method", "gptq", "--quant_bits", "4", "--load_data_args", "true",
            "--output_dir", str(tmp_path / "q")]
    (model / "args.json").write_text(json.dumps({"dataset": [str(tmp_path / "trained-on.jsonl")]}))
    assert main(argv) == 2  # the run's dataset is read (and is missing here) before the GPU is asked for
    assert "trained-on.jsonl" in capsys.readouterr().err
    (model / "args.json").write_text(json.dumps({"dataset": [str(data)]}))
    assert main(argv) == 2
    assert "--quant_method gptq needs a CUDA GPU" in capsys.readouterr().err
