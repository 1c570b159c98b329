"""Per-method and per-machine defaults (alignkit/config/defaults.py): --disable_dropout as TRL and ms-swift
default it for preference training, --gradient_checkpointing and --max_length as ms-swift sets them."""

import json
import logging

import pytest
import torch

from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.config.defaults import fit_defaults, resolve
from alignkit.errors import AlignkitError

PLAIN = ["--padding_free", "false", "--prefix_sharing", "false", "--precompute_ref_log_probs", "false"]


def test_dropout_is_off_by_default_for_preference_methods_and_on_for_sft(caplog):
    caplog.set_level(logging.INFO, logger="alignkit")
    for method in ("dpo", "kto", "cpo", "simpo", "orpo", "rm", "ppo", "grpo"):
        assert resolve(RunArguments(rlhf_type=method), method)["disable_dropout"] is True, method
    assert "--disable_dropout not set: dropout off for dpo, as TRL and ms-swift train it" in caplog.text
    caplog.clear()
    assert resolve(RunArguments(), "sft")["disable_dropout"] is False
    assert "disable_dropout" not in caplog.text  # nothing applied, nothing said
    assert resolve(RunArguments(disable_dropout=False), "dpo")["disable_dropout"] is False  # the user's word
    assert resolve(RunArguments(disable_dropout=True), "sft")["disable_dropout"] is True
    for method in ("ppo", "grpo"):
        with pytest.raises(AlignkitError, match="--disable_dropout false: --rlhf_type .* keeps dropout off"):
            resolve(RunArguments(rlhf_type=method, disable_dropout=False), method)


def test_disable_dropout_zeroes_every_dropout_module_lora_included(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from alignkit.models.load import add_lora, disable_dropout

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), rank=4, alpha=8, dropout=0.3,
                     target_modules=["all-linear"])
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.3 for m in dropouts)
    assert disable_dropout(model) == len(dropouts)
    assert all(m.p == 0.0 for m in dropouts)


def dpo_losses(tiny_model_dir, out, *flags) -> list[float]:
    assert main(["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-pref#6",
                 "--max_steps", "3", "--batch_size", "2", "--logging_steps", "1", "--learning_rate", "1e-2",
                 "--lora_dropout", "0.3", "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none",
                 "--max_length", "256", *flags]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(line)["loss"] for line in (run_dir / "logging.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_with_dropout_off_the_packed_and_padded_paths_follow_the_same_numbers(tiny_model_dir, tmp_path):
    # Default: dropout off, so the speed-ups change nothing (LoRA dropout 0.3 notwithstanding).
    fast = dpo_losses(tiny_model_dir, tmp_path / "fast")
    plain = dpo_losses(tiny_model_dir, tmp_path / "plain", *PLAIN)
    assert len(fast) == 3 and fast == pytest.approx(plain, abs=2e-5)
    # --disable_dropout false keeps LoRA's dropout: the two paths draw different masks, so after the first
    # update (LoRA B starts at 0, so step 1 is unaffected) their losses part.
    fast = dpo_losses(tiny_model_dir, tmp_path / "fast-dropout", "--disable_dropout", "false")
    plain = dpo_losses(tiny_model_dir, tmp_path / "plain-dropout", "--disable_dropout", "false", *PLAIN)
    assert fast[0] == pytest.approx(plain[0], abs=2e-5)
    assert abs(fast[2] - plain[2]) > 1e-4


def test_gradient_checkpointing_follows_the_machine_and_max_length_the_model(tiny_model_dir, caplog):
    from alignkit.models.load import model_max_length

    caplog.set_level(logging.INFO, logger="alignkit")
    assert model_max_length(tiny_model_dir) == 512  # the tiny Llama's max_position_embeddings
    assert fit_defaults(RunArguments(), on_gpu=True, model_max_length=512) == {
        "gradient_checkpointing": True, "max_length": 512}
    assert "--gradient_checkpointing not set: on (on with a GPU, as ms-swift" in caplog.text
    assert "--max_length not set: 512, the model's own limit (ms-swift's default)" in caplog.text
    caplog.clear()
    assert fit_defaults(RunArguments(), on_gpu=False, model_max_length=512)["gradient_checkpointing"] is False
    assert "off on a CPU, where memory is rarely what limits a run and it only costs time" in caplog.text
    caplog.clear()
    said = RunArguments(gradient_checkpointing=False, max_length=100)
    assert fit_defaults(said, on_gpu=True, model_max_length=None) == {"gradient_checkpointing": False,
                                                                      "max_length": 100}
    assert "not set" not in caplog.text
    with pytest.raises(AlignkitError, match="pass --max_length"):
        fit_defaults(RunArguments(), on_gpu=False, model_max_length=None)


def test_a_run_records_the_defaults_it_ran_with(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="alignkit")
    out = tmp_path / "out"
    assert main(["sft", "--model", tiny_model_dir, "--dataset", "arith-sft#4", "--max_steps", "1",
                 "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    recorded = json.loads((run_dir / "args.json").read_text())
    assert recorded["max_length"] == 512
    assert recorded["gradient_checkpointing"] is torch.cuda.is_available()
    assert caplog.text.count("--max_length not set") == 1
