"""Bad flags, model directories, adapters and output paths end with exit status 2 and a message naming
what is wrong, never a traceback; --debug shows the traceback."""

import json
import shutil

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError

PAIR = {"prompt": "What is 1 + 1?", "chosen": "Answer: 2", "rejected": "Answer: 3"}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text((json.dumps(PAIR) + "\n") * 2)
    return str(path)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


def run(capsys, *argv) -> str:
    """Run the CLI, assert exit status 2 without a traceback, return the error message."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err[err.index("alignkit: error: "):].strip()


def rlhf(model, data, out, *extra):
    return ["rlhf", "--model", str(model), "--dataset", data, "--output_dir", str(out), "--dtype", "fp32",
            "--report_to", "none", "--max_steps", "1", *extra]


@pytest.mark.parametrize(("flags", "message"), [
    (["--batch_size", "0"], "--per_device_train_batch_size 0: expected a positive integer"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: expected a positive integer"),
    (["--save_steps", "0"], "--save_steps 0: expected a positive integer"),
    (["--logging_steps=-1"], "--logging_steps -1: expected a positive integer"),
    (["--max_length", "0"], "--max_length 0: expected a positive integer"),
    (["--max_nonfinite_steps", "0"], "--max_nonfinite_steps 0: expected a positive integer"),
    (["--learning_rate", "nan"], "--learning_rate nan: expected a value in [0.0, inf)"),
    (["--learning_rate=-1e-4"], "--learning_rate -0.0001: expected a value in [0.0, inf)"),
    (["--lora_dropout", "1.5"], "--lora_dropout 1.5: expected a value in [0.0, 1.0)"),
    (["--adam_beta2", "1"], "--adam_beta2 1.0: expected a value in [0.0, 1.0)"),
    (["--warmup_ratio", "2"], "--warmup_ratio 2.0: expected a value in [0.0, 1.0]"),
    (["--max_grad_norm", "inf"], "--max_grad_norm inf: expected a finite number"),
    (["--beta", "nan"], "--beta nan: expected a finite number"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs 0.0: expected a positive number"),
    (["--loss_type", "sigmoid", "sigmoidd"], "--loss_type sigmoidd: unknown DPO loss; choose from sigmoid, "),
])
def test_out_of_range_flags_name_the_flag(flags, message, tiny_model_dir, data, tmp_path, capsys):
    err = run(capsys, *rlhf(tiny_model_dir, data, tmp_path / "out"), *flags)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_a_flag_of_the_wrong_type_is_an_argparse_error_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rlhf", "--batch_size", "two"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --per_device_train_batch_size/--batch_size: invalid int value: 'two'" in err
    assert "Traceback" not in err


def test_lora_targets_the_model_does_not_have(tiny_model_dir, data, tmp_path, capsys):
    err = run(capsys, *rlhf(tiny_model_dir, data, tmp_path / "out", "--lora_target_modules", "no_such_proj"))
    assert err.startswith("alignkit: error: --lora_target_modules no_such_proj: ")
    assert "no_such_proj" in err[60:]


def break_config(model):
    (model / "config.json").write_text('{"model_type": ')


def unknown_architecture(model):
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))


def remove_weights(model):
    (model / "model.safetensors").unlink()


def truncate_weights(model):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def break_tokenizer(model):
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": ')


@pytest.mark.parametrize(
    "damage", [break_config, unknown_architecture, remove_weights, truncate_weights, break_tokenizer]
)
def test_a_broken_model_directory_is_named(damage, model_copy, data, tmp_path, capsys):
    damage(model_copy)
    err = run(capsys, *rlhf(model_copy, data, tmp_path / "out"))
    assert f"alignkit: error: cannot load the model in {model_copy} (" in err
    assert len(err) < 1000


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--model", "/no/such/model", "--model /no/such/model: no such directory"),
        ("--model", "{tmp}", "--model {tmp}: the directory has no config.json, so it is not a HF model"),
        ("--ref_model", "/no/such/ref", "--ref_model /no/such/ref: no such directory"),
        ("--adapters", "/no/such/adapter", "--adapters /no/such/adapter: no adapter_config.json there"),
        ("--output_dir", "{file}", "--output_dir {file}: cannot create a run directory there"),
        (
            "--resume_from_checkpoint",
            "/no/such/checkpoint",
            "--resume_from_checkpoint /no/such/checkpoint: no such directory",
        ),
    ],
)
def test_bad_paths_are_named(flag, value, message, tiny_model_dir, data, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    fill = {"tmp": str(tmp_path / "empty"), "file": str(tmp_path / "a-file")}
    argv = rlhf(tiny_model_dir, data, tmp_path / "out", "--train_type", "full")
    if flag in ("--model", "--output_dir"):
        argv[argv.index(flag) + 1] = value.format(**fill)
    else:
        argv += [flag, value.format(**fill)]
    if flag == "--adapters":
        argv[argv.index("full")] = "lora"
    assert message.format(**fill) in run(capsys, *argv)


def test_a_broken_adapter_is_named(tiny_model_dir, data, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json")
    err = run(capsys, *rlhf(tiny_model_dir, data, tmp_path / "out", "--adapters", str(adapter)))
    assert f"alignkit: error: --adapters {adapter}: cannot load the adapter (" in err


def test_a_broken_ckpt_dir_is_named_by_infer(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("[1, ")
    err = run(capsys, "infer", "--ckpt_dir", str(tmp_path), "--val_dataset", "arith-prompts:test#1")
    assert f"--ckpt_dir {tmp_path}: adapter_config.json is unreadable" in err


def test_debug_shows_the_traceback(tiny_model_dir, data, tmp_path):
    with pytest.raises(AlignkitError, match="--save_steps 0: expected a positive integer"):
        main([*rlhf(tiny_model_dir, data, tmp_path / "out"), "--save_steps", "0", "--debug"])
