"""peft's tuners and LoRA's options as ms-swift names them (--tuner_type, --use_dora, --init_weights, LoRA+,
--modules_to_save, AdaLoRA's budget, --new_special_tokens): each trains, its checkpoint holds the tuner's own
weights, and resume and `alignkit export --merge_lora` work on them; the tuners peft lacks stop with a reason."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


def sft(model: str, out: Path, *extra: str, steps: int = 2) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#8", "--max_steps", str(steps), "--save_steps", "1",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none",
            "--dtype", "fp32", "--lora_dropout", "0", *extra]


# (flags, peft_type in adapter_config.json, a key every checkpoint of the tuner holds)
TUNERS = {
    "dora": (["--use_dora", "true"], "LORA", "lora_magnitude_vector"),
    "rslora": (["--use_rslora", "true"], "LORA", "lora_B"),
    "adalora": (["--tuner_type", "adalora", "--adalora_init_r", "4", "--adalora_target_r", "2"], "ADALORA", "lora_E"),
    "vera": (["--tuner_type", "vera", "--vera_rank", "8"], "VERA", "vera_lambda_b"),
    "boft": (["--tuner_type", "boft", "--boft_block_size", "4"], "BOFT", "boft_R"),
    "fourierft": (["--tuner_type", "fourierft", "--fourier_n_frequency", "16"], "FOURIERFT", "fourierft_spectrum"),
    "bone": (["--tuner_type", "bone"], "MISS", "miss_block"),
    "pissa": (["--init_weights", "pissa"], "LORA", "lora_A"),
    "olora": (["--init_weights", "olora"], "LORA", "lora_A"),
}


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_each_tuner_trains_and_its_checkpoint_holds_its_weights(tiny_model_dir, tmp_path, name):
    flags, peft_type, key = TUNERS[name]
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, *flags)) == 0
    run_dir = run_dir_of(out)
    assert all(math.isfinite(r["loss"]) for r in records(run_dir) if "loss" in r)
    config = json.loads((run_dir / "checkpoint-2" / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    own = [k for k in second if key in k]
    assert own, f"no {key} in {sorted(second)[:5]}"
    assert any(not torch.equal(first[k], second[k]) for k in own)  # the tuner's own weights train
    if name == "dora":
        assert config["use_dora"] is True
    if name == "rslora":
        assert config["use_rslora"] is True
    if name in ("pissa", "olora"):
        assert config["init_lora_weights"] == name


def export_and_compare(base: str, checkpoint: Path, tmp_path: Path) -> None:
    """`alignkit export --merge_lora` gives the logits of base + adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = tmp_path / "merged"
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true", "--output_dir", str(merged),
                 "--dtype", "fp32"]) == 0
    ids = torch.tensor([[5, 17, 42, 3, 99, 8]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoint).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["dora", "vera", "pissa"])
def test_tuner_checkpoints_resume_exactly_and_export_merged(tiny_model_dir, tmp_path, name):
    flags = TUNERS[name][0]
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, *flags, steps=3)) == 0
    run_dir = run_dir_of(out)
    straight = load_file(run_dir / "checkpoint-3" / "adapter_model.safetensors")
    shutil.rmtree(run_dir / "checkpoint-3")
    shutil.rmtree(run_dir / "checkpoint-2")
    assert main(sft(tiny_model_dir, out, *flags, "--resume_from_checkpoint", str(run_dir / "checkpoint-1"),
                    steps=3)) == 0
    resumed = load_file(run_dir / "checkpoint-3" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    export_and_compare(tiny_model_dir, run_dir / "checkpoint-3", tmp_path)


def test_adalora_allocates_its_rank_budget_and_adds_its_orthogonality_penalty(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--tuner_type", "adalora", "--adalora_init_r", "4", "--adalora_target_r",
                    "1", "--adalora_tinit", "0", "--adalora_tfinal", "1", "--adalora_deltaT", "1", steps=4)) == 0
    run_dir = run_dir_of(out)
    logged = [r for r in records(run_dir) if "loss" in r]
    assert all(r["adalora_orth_reg"] > 0 for r in logged)
    config = json.loads((run_dir / "checkpoint-4" / "adapter_config.json").read_text())
    assert config["total_step"] == 4
    # The budget keeps target_r (1) of init_r (4) singular values per adapted matrix on average (14 matrices: 7
    # linear layers x 2); the checkpoint keeps only those, as peft saves an AdaLoRA adapter.
    kept = sum(sum(mask) for mask in config["rank_pattern"].values())
    assert len(config["rank_pattern"]) == 14 and kept == 14
    weights = load_file(run_dir / "checkpoint-4" / "adapter_model.safetensors")
    assert sum(w.numel() for k, w in weights.items() if "lora_E" in k) == kept


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--lorap_lr_ratio", "16", steps=1)) == 0
    groups = torch.load(run_dir_of(out) / "checkpoint-1" / "optimizer.pt", weights_only=False)["param_groups"]
    rates = sorted({g["initial_lr"] for g in groups if g["params"]})
    assert rates == [pytest.approx(1e-2), pytest.approx(0.16)]


@pytest.mark.parametrize("optimizer", [None, "muon"])
def test_per_parameter_learning_rates_reach_adamw_and_muon_groups(optimizer):
    from alignkit.training.loop_config import LoopConfig
    from alignkit.training.optimizers import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))  # 0.weight 0.bias 1.weight 1.bias
    config = LoopConfig(learning_rate=1e-3, weight_decay=0.1, optimizer=optimizer,
                        learning_rate_of=lambda name, param: 1e-2 if name.startswith("1.") else 1e-3)
    groups = make_optimizer(model, config).param_groups
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert rate[id(model[0].weight)] == (1e-3, 0.1) and rate[id(model[0].bias)] == (1e-3, 0.0)
    assert rate[id(model[1].weight)] == (1e-2, 0.1) and rate[id(model[1].bias)] == (1e-2, 0.0)
    assert groups[0]["lr"] == 1e-3  # the logged learning rate is --learning_rate's


def test_lora_plus_groups_name_by_name():
    from alignkit.models.tuners import lora_plus_learning_rate

    weight, bias = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    assert lora_plus_learning_rate("x.lora_A.default.weight", weight, 1e-4, 16) == 1e-4
    assert lora_plus_learning_rate("x.lora_B.default.weight", weight, 1e-4, 16) == pytest.approx(1.6e-3)
    assert lora_plus_learning_rate("x.norm.weight", bias, 1e-4, 16) == pytest.approx(1.6e-3)
    assert lora_plus_learning_rate("x.lora_embedding_B.default", weight, 1e-4, 16) == 1e-6


def test_new_special_tokens_train_with_modules_to_save_and_export(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<tool_call> </tool_call>\n")
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--new_special_tokens", str(tokens), "<think>", "--modules_to_save",
                    "embed_tokens", steps=1)) == 0
    checkpoint = run_dir_of(out) / "checkpoint-1"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert {"<tool_call>", "</tool_call>", "<think>"} <= set(tokenizer.get_vocab())
    weights = load_file(checkpoint / "adapter_model.safetensors")
    embeddings = [w for k, w in weights.items() if "embed_tokens.modules_to_save" in k]
    assert [e.shape[0] for e in embeddings] == [512]  # 403 tokens, grown to a multiple of 128 as ms-swift does
    merged = tmp_path / "merged"
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true", "--output_dir", str(merged)]) == 0
    assert AutoModelForCausalLM.from_pretrained(merged).get_input_embeddings().weight.shape[0] == 512


def test_modules_to_save_train_in_full_beside_the_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, "--modules_to_save", "all-norm", steps=2)) == 0
    run_dir = run_dir_of(out)
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    norms = [k for k in second if "norm" in k and "lora_" not in k]
    assert norms and any(not torch.equal(first[k], second[k]) for k in norms)


@pytest.mark.parametrize("argv, message", [
    (["--tuner_type", "reft"], "ReFT is not supported"),
    (["--init_weights", "pissa_niter_4"], "use --init_weights pissa (the exact SVD)"),
    (["--init_weights", "eva"], "data-driven eva and corda are not supported"),
    (["--tuner_type", "vera", "--use_dora", "true"], "--use_dora is an option of LoRA"),
    (["--tuner_type", "boft", "--lorap_lr_ratio", "16"], "--lorap_lr_ratio (LoRA+) applies to --tuner_type lora"),
    (["--reft_rank", "8"], "the flag only sets --tuner_type bone's rank"),
    (["--new_special_tokens", "<x>"], "add --modules_to_save embed_tokens lm_head"),
    (["--tuner_type", "adalora", "--resume_from_checkpoint", "last"], "continue from its adapter in a new run"),
    *([(["--init_weights", "loftq"], "LoftQ's initialisation on a CUDA GPU")] if not torch.cuda.is_available() else []),
])
def test_what_peft_or_alignkit_lacks_stops_with_what_to_use(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main(sft(tiny_model_dir, tmp_path / "out", *argv)) == 2
    assert message in capsys.readouterr().err


def test_base_rewriting_init_refuses_a_live_adapter_disabled_reference(tiny_model_dir, tmp_path, capsys):
    code = main(["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-pref#4", "--max_steps",
                 "1", "--init_weights", "pissa", "--precompute_ref_log_probs", "false", "--output_dir",
                 str(tmp_path), "--report_to", "none"])
    assert code == 2
    assert "rewrites the base weights" in capsys.readouterr().err


def test_base_rewriting_init_with_a_precomputed_reference_starts_at_ln2(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-pref#4", "--max_steps",
                 "1", "--init_weights", "olora", "--batch_size", "2", "--logging_steps", "1", "--output_dir",
                 str(out), "--report_to", "none", "--dtype", "fp32", "--lora_dropout", "0"]) == 0
    # Rewritten base + initial adapter = the original model, which is what the reference was computed on.
    first = next(r for r in records(run_dir_of(out)) if "loss" in r)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_tuner_flags_for_another_tuner_say_they_have_no_effect(tiny_model_dir, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="alignkit"):
        assert main(sft(tiny_model_dir, tmp_path / "out", "--vera_rank", "16", steps=1)) == 0
    assert "--vera_rank has no effect with --tuner_type lora (it serves vera)" in caplog.text


def test_lora_llm_trains_the_vision_encoder_and_aligner_in_full_beside_the_llm_lora(tmp_path):
    from tiny_vlms import build_llava, write_images

    from alignkit.vision.model import part_of

    model_dir = tmp_path / "llava"
    build_llava(model_dir)
    names = [Path(p).name for p in write_images(tmp_path)]  # beside the data file, which names them relatively
    rows = [{"messages": [{"role": "user", "content": f"<image>What is {i} + 1?"},
                          {"role": "assistant", "content": f"Answer: {i + 1}"}],
             "rejected_response": f"Answer: {i + 2}", "images": [names[i % len(names)]]} for i in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--model", str(model_dir), "--dataset", str(data), "--tuner_type",
                 "lora_llm", "--max_steps", "2", "--save_steps", "1", "--batch_size", "2", "--learning_rate", "1e-2",
                 "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none"]) == 0
    run_dir = run_dir_of(out)
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    lora_parts = {part_of(k) for k in second if "lora_" in k}
    full_parts = {part_of(k) for k in second if "lora_" not in k}
    assert lora_parts == {"llm"} and full_parts == {"vit", "aligner"}
    moved = {part_of(k) for k in second if not torch.equal(first[k], second[k])}
    assert {"llm", "aligner"} <= moved
