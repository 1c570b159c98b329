"""LoRA-GA (--init_weights lora-ga, alignkit/models/lora_ga.py): A and B come from the singular vectors of the
measured gradient, the model's output is unchanged at the start, and the checkpoint is a plain rank-2r LoRA that
reproduces the trained model on the unchanged base, and resumes exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.data.template import Encoded
from alignkit.models import lora_ga
from alignkit.models.lora_ga import LoraGaSettings, factors
from alignkit.models.weights import load_model_weights
from alignkit.training.checkpoint import save_checkpoint

IDS = torch.tensor([[5, 17, 42, 3, 99, 8, 23, 11]])


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))[0]  # (rows, cols)


@pytest.mark.parametrize("direction, a_index, b_index", [
    ("ArB2r", [0, 1, 2], [3, 4, 5]), ("A2rBr", [3, 4, 5], [0, 1, 2]), ("ArBr", [1, 3, 5], [0, 2, 4])])
@pytest.mark.parametrize("scale", ["stable", "gd", "unit", "weightS"])
def test_a_and_b_are_the_gradients_singular_vectors_chosen_by_direction_and_scaled(direction, a_index, b_index,
                                                                                   scale):
    # G = U S V^T of rank 2r = 6 with distinct singular values: svd_lowrank (q = 4r) recovers it exactly.
    out_features, in_features, rank, scaling, gamma = 24, 20, 3, 2.5, 16
    u, v = orthonormal(out_features, 6, 0), orthonormal(in_features, 6, 1)
    gradient = u @ torch.diag(torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])) @ v.T
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(2))
    a, b = factors(gradient, weight, rank, scaling, LoraGaSettings(direction=direction, scale=scale,
                                                                   stable_gamma=gamma))
    expected = {"stable": out_features ** 0.25 / math.sqrt(gamma), "gd": 1 / scaling, "unit": 1.0,
                "weightS": (torch.linalg.svdvals(weight)[:rank] / scaling).sqrt().mean().item()}[scale]
    # Each row of A is +-factor x the chosen right singular vector, each column of B the chosen left one.
    assert torch.allclose((a @ v[:, a_index]).abs(), expected * torch.eye(rank), atol=1e-4)
    assert torch.allclose((u[:, b_index].T @ b).abs(), expected * torch.eye(rank), atol=1e-4)


def tiny_lora(rank: int = 2):
    tokenizer = build_tiny_tokenizer()
    base = build_tiny_model(tokenizer, init_std=0.2)
    config = LoraConfig(r=rank, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, config), tokenizer


def rows(count: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(4, 200, (12,), generator=g).tolist()
        out.append(Encoded(ids, [-100] * 4 + ids[4:]))
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_the_start_leaves_the_output_unchanged_and_follows_the_measured_gradient():
    model, tokenizer = tiny_lora()
    before = logits(model)
    # The gradient by hand: the plain model, the mean of two batches' mean token losses.
    plain = build_tiny_model(build_tiny_tokenizer(), init_std=0.2)
    data = rows(4)
    for i in range(2):
        from alignkit.data.collate import pad

        input_ids, mask, labels = pad(data[2 * i:2 * i + 2], tokenizer.pad_token_id)
        plain(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
    by_hand = plain.model.layers[0].mlp.up_proj.weight.grad / 2  # (64, 32)
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    measured = lora_ga.estimate_gradients(model, [layer.base_layer.weight], data, tokenizer.pad_token_id,
                                          LoraGaSettings())
    assert torch.allclose(measured[0], by_hand, atol=1e-6)

    settings = LoraGaSettings(direction="ArB2r", scale="unit")
    assert lora_ga.initialise(model, data, tokenizer.pad_token_id, settings) == 14  # 7 linear layers x 2
    assert torch.allclose(logits(model), before, atol=1e-5)
    # ArB2r: A's rows span the top r right singular vectors, B's columns the next r left ones (unit scale), up to
    # svd_lowrank's (q = 4r) small error.
    u, _, vt = torch.linalg.svd(by_hand)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    r = 2
    assert torch.linalg.norm(a - a @ vt[:r].T @ vt[:r]) < 1e-2 * torch.linalg.norm(a)
    assert torch.linalg.norm(b - u[:, r:2 * r] @ u[:, r:2 * r].T @ b) < 1e-2 * torch.linalg.norm(b)
    # ... and the base weight carries W - s B A.
    assert torch.allclose(layer.base_layer.weight + 4.0 * b @ a, plain.model.layers[0].mlp.up_proj.weight, atol=1e-6)


def test_the_checkpoint_is_a_plain_lora_on_the_unchanged_base_and_resumes_to_the_same_model(tmp_path):
    model, tokenizer = tiny_lora()
    lora_ga.initialise(model, rows(4), tokenizer.pad_token_id, LoraGaSettings())
    with torch.no_grad():  # as if trained: A and B move away from their start
        for _, layer in lora_ga.lora_layers(model):
            layer.lora_A["default"].weight.add_(0.05 * torch.randn_like(layer.lora_A["default"].weight))
            layer.lora_B["default"].weight.add_(0.05 * torch.randn_like(layer.lora_B["default"].weight))
    trained = logits(model)
    from alignkit.training.checkpoint import TrainerState

    checkpoint = save_checkpoint(tmp_path, TrainerState(global_step=1), model=model, tokenizer=tokenizer,
                                 optimizer=None, scheduler=None, args={}, save_total_limit=None)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (4, 16, True)
    # Any LoRA loader: the unchanged base model plus the converted adapter is the trained model.
    base = build_tiny_model(build_tiny_tokenizer(), init_std=0.2)
    assert torch.allclose(logits(PeftModel.from_pretrained(base, checkpoint)), trained, atol=1e-5)
    # Resume: a LoRA-GA model started elsewhere (other rows) loads back to the same adapter and base weights.
    other, _ = tiny_lora()
    lora_ga.initialise(other, rows(4, seed=7), tokenizer.pad_token_id, LoraGaSettings())
    assert not torch.allclose(logits(other), trained, atol=1e-3)
    load_model_weights(other, checkpoint)
    assert torch.allclose(logits(other), trained, atol=1e-5)
    for (_, mine), (_, theirs) in zip(lora_ga.lora_layers(model), lora_ga.lora_layers(other)):
        assert torch.allclose(mine.base_layer.weight, theirs.base_layer.weight, atol=1e-6)
        assert torch.equal(mine.lora_A["default"].weight, theirs.lora_A["default"].weight)


def sft(model: str, out, *extra: str, steps: int = 2) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#8", "--max_steps", str(steps), "--save_steps", "1",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none",
            "--dtype", "fp32", "--lora_dropout", "0", "--lora_rank", "4", "--eval_strategy", "no", *extra]


LORA_GA = ("--init_weights", "lora-ga", "--lora_ga_batch_size", "2", "--lora_ga_iters", "2", "--lora_ga_max_length",
           "64", "--lora_ga_direction", "ArB2r", "--lora_ga_scale", "stable", "--lora_ga_stable_gamma", "16")


def first_loss(out) -> float:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    lines = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in lines if "loss" in r)


def test_sft_with_lora_ga_starts_at_the_models_loss_resumes_exactly_and_exports(tiny_model_dir, tmp_path):
    from test_tuners import export_and_compare

    plain = tmp_path / "plain"
    assert main(sft(tiny_model_dir, plain, steps=1)) == 0
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, *LORA_GA, steps=3)) == 0
    assert first_loss(out) == pytest.approx(first_loss(plain), rel=1e-5)  # the start changes nothing
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    straight = load_file(run_dir / "checkpoint-3" / "adapter_model.safetensors")
    assert all(v.shape[0 if "lora_A" in k else 1] == 8 for k, v in straight.items())  # 2r
    shutil.rmtree(run_dir / "checkpoint-3")
    shutil.rmtree(run_dir / "checkpoint-2")
    assert main(sft(tiny_model_dir, out, *LORA_GA, "--resume_from_checkpoint", str(run_dir / "checkpoint-1"),
                    steps=3)) == 0
    resumed = load_file(run_dir / "checkpoint-3" / "adapter_model.safetensors")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    export_and_compare(tiny_model_dir, run_dir / "checkpoint-3", tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--use_dora", "true"], "LoRA-GA has no start for DoRA"),
    (["--tuner_type", "vera"], "it does not apply to --tuner_type vera"),
    (["--lora_ga_iters", "0"], "--lora_ga_iters 0: expected a positive integer"),
    (["--lora_ga_batch_size", "8", "--lora_ga_iters", "8"], "needs 64 training rows; the data has"),
    (["--sequence_parallel_size", "2"], "--sequence_parallel_size with --init_weights lora-ga"),
])
def test_what_lora_ga_cannot_start_stops_with_a_reason(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main(sft(tiny_model_dir, tmp_path / "out", "--init_weights", "lora-ga", *argv)) == 2
    assert message in capsys.readouterr().err


def test_lora_ga_with_a_preference_method_stops(tiny_model_dir, tmp_path, capsys):
    argv = ["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-dpo#4", "--output_dir",
            str(tmp_path), "--init_weights", "lora-ga"]
    assert main(argv) == 2
    assert "LoRA-GA estimates the gradient of the SFT loss" in capsys.readouterr().err
