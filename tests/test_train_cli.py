"""End-to-end runs of the CLI on the tiny model: run directory, checkpoints, metrics, learning."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main

SWIFT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"Answer: {a + b}"},
        ],
        "rejected_response": f"Answer: {a + b + 1}",
    }
    for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)]
]


@pytest.fixture
def swift_dataset(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in SWIFT_ROWS) + "\n")
    return str(path)


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("train_type", ["lora", "full"])
def test_dpo_step_one_loss_is_ln2_and_accuracy_zero(tiny_model_dir, swift_dataset, tmp_path, train_type):
    out = tmp_path / "out"
    code = main([
        "rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", swift_dataset,
        "--train_type", train_type, "--max_steps", "1", "--logging_steps", "1", "--batch_size", "2",
        "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none",
    ])
    assert code == 0
    first = records(run_dir_of(out))[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/accuracies"] == 0.0
    assert first["rewards/margins"] == 0.0


def test_lora_dpo_run_writes_run_dir_checkpoints_metrics_and_changes_weights(tiny_model_dir, swift_dataset, tmp_path):
    out = tmp_path / "out"
    code = main([
        "rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", swift_dataset,
        "--val_dataset", swift_dataset, "--max_steps", "4", "--save_steps", "2", "--logging_steps", "2",
        "--batch_size", "2", "--learning_rate", "1e-2", "--output_dir", str(out), "--dtype", "fp32",
        "--rpo_alpha", "0.1",
    ])
    assert code == 0
    run_dir = run_dir_of(out)
    assert run_dir.name.startswith("v0-")
    assert (run_dir / "args.json").is_file() and list((run_dir / "runs").iterdir())  # TensorBoard events
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    checkpoint = run_dir / "checkpoint-4"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "args.json",
                 "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pt"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 4

    logged = records(run_dir)
    train_keys = {"step", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                  "logps/chosen", "logps/rejected", "nll_loss", "grad_norm", "learning_rate", "epoch"}
    assert train_keys <= set(logged[0])
    assert any("eval_loss" in r and "eval_rewards/accuracies" in r for r in logged)

    # LoRA's B matrices start at zero: training must have moved them.
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)


def test_full_sft_run_changes_the_weights(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code = main([
        "sft", "--model", tiny_model_dir, "--dataset", "arith-sft#8", "--train_type", "full", "--max_steps", "2",
        "--batch_size", "2", "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none",
        "--learning_rate", "1e-3",
    ])
    assert code == 0
    checkpoint = run_dir_of(out) / "checkpoint-2"
    trained = load_file(checkpoint / "model.safetensors")
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert changed
    assert "loss" in records(run_dir_of(out))[0]


def test_seed_command_runs_with_local_model_and_data(tiny_model_dir, swift_dataset, tmp_path):
    # shared/seeds 001, with `swift` → `alignkit`, model and data local, --max_steps 2.
    code = main([
        "rlhf", "--rlhf_type", "dpo", "--model_type", tiny_model_dir, "--beta", "0.1", "--rpo_alpha", "0.1",
        "--sft_type", "lora", "--dataset", swift_dataset, "--num_train_epochs", "2", "--lora_target_modules", "ALL",
        "--gradient_checkpointing", "true", "--batch_size", "1", "--learning_rate", "5e-5",
        "--gradient_accumulation_steps", "16", "--warmup_ratio", "0.03", "--save_total_limit", "2",
        "--max_steps", "2", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
    ])
    assert code == 0


def test_legacy_swift_dpo_command_and_3x_spellings_run(tiny_model_dir, swift_dataset, tmp_path):
    # shared/seeds 000 (`swift dpo ...`), hub names swapped for local ones.
    code = main([
        "dpo", "--model_type", "yi-6b-chat", "--model_id_or_path", tiny_model_dir, "--ref_model_type", "yi-6b-chat",
        "--model_revision", "master", "--sft_type", "lora", "--tuner_backend", "swift", "--dtype", "AUTO",
        "--output_dir", str(tmp_path / "out"), "--dataset", swift_dataset, "--num_train_epochs", "3",
        "--max_length", "1024", "--max_prompt_length", "512", "--check_dataset_strategy", "none",
        "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout_p", "0.05", "--lora_target_modules", "DEFAULT",
        "--gradient_checkpointing", "true", "--batch_size", "1", "--weight_decay", "0.1", "--learning_rate", "5e-5",
        "--gradient_accumulation_steps", "2", "--max_grad_norm", "1.0", "--warmup_ratio", "0.03",
        "--eval_steps", "2000", "--save_steps", "2000", "--save_total_limit", "2", "--logging_steps", "10",
        "--max_steps", "2", "--check_model_is_latest", "false", "--report_to", "none",
    ])
    assert code == 0
    for spelling in ("--train_type", "--tuner_type"):
        assert main([
            "rlhf", "--model", tiny_model_dir, "--dataset", swift_dataset, spelling, "lora", "--torch_dtype", "fp32",
            "--max_steps", "1", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
        ]) == 0


def test_unknown_flag_names_the_closest_known_one(capsys):
    assert main(["rlhf", "--rlhf_type", "dpo", "--learning_rat", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "unknown flag --learning_rat" in err and "did you mean --learning_rate?" in err


def test_unknown_model_type_without_a_path_says_what_to_pass(capsys):
    assert main(["rlhf", "--rlhf_type", "dpo", "--model_type", "my-own-llama-8b"]) == 2
    err = capsys.readouterr().err
    assert "--model_type my-own-llama-8b is not an ms-swift model registry name alignkit knows" in err
    assert "Pass --model" in err


def test_bad_dataset_row_fails_before_training_with_file_and_row(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(SWIFT_ROWS[0]) + "\n" + '{"messages": [{"role": "user"}], "rejected_response": "x"}\n')
    out = tmp_path / "out"
    assert main(["rlhf", "--model", tiny_model_dir, "--dataset", str(path), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "row 2" in err
    assert not out.exists()


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(tiny_model_dir, swift_dataset, tmp_path):
    common = ["rlhf", "--model", tiny_model_dir, "--dataset", swift_dataset, "--batch_size", "2",
              "--max_steps", "6", "--learning_rate", "1e-2", "--dtype", "fp32", "--report_to", "none",
              "--save_steps", "3", "--num_train_epochs", "3"]
    assert main([*common, "--output_dir", str(tmp_path / "a")]) == 0
    full_run = run_dir_of(tmp_path / "a")
    assert main([*common, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(full_run / "checkpoint-3")]) == 0
    resumed = run_dir_of(tmp_path / "b")
    a = load_file(full_run / "checkpoint-6" / "adapter_model.safetensors")
    b = load_file(resumed / "checkpoint-6" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_hub_model_offline_says_to_pass_a_local_path(tmp_path, capsys, monkeypatch):
    # Offline mode: the same failure as an unreachable hub, without 40 s of connection retries.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["rlhf", "--model", "some-org/some-model", "--dataset", "arith-pref#4",
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "could not load 'some-org/some-model' from the model hub" in err
    assert "pass its local directory with --model" in err


def test_help_lists_ms_swift_flags(capsys):
    with pytest.raises(SystemExit):
        main(["rlhf", "--help"])
    out = capsys.readouterr().out
    for flag in ("--rlhf_type", "--sft_type", "--lora_dropout_p", "--batch_size", "--max_prompt_length"):
        assert flag in out
