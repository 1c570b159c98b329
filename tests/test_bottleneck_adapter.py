"""ms-swift's Adapter tuner (--tuner_type adapter, alignkit/models/bottleneck_adapter.py): a bottleneck
h + W2 act(W1 h + b1) + b2 after every decoder MLP, started as ms-swift starts it, the only thing that trains; its
checkpoint is ms-swift's layout (default/adapter_config.json, default/adapter_model.safetensors), which infer loads
back to the trained model and which resumes exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignkit.cli import main
from alignkit.models import bottleneck_adapter
from alignkit.models.load import load_for_inference

IDS = torch.tensor([[5, 17, 42, 3, 99, 8, 23, 11]])
KEYS = {f"model.layers.{i}.mlp.adapter_default.linear{j}.{p}" for i in range(2) for j in (1, 2)
        for p in ("weight", "bias")}


def test_the_adapter_follows_each_mlp_starts_as_ms_swift_and_is_all_that_trains():
    model = build_tiny_model(build_tiny_tokenizer(), init_std=0.2).eval()
    with torch.no_grad():
        before = model(IDS).logits
    model = bottleneck_adapter.attach(model, length=16, act="gelu")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == KEYS  # ms-swift's names
    mlp = model.model.layers[1].mlp
    adapter = mlp.adapter_default
    # ms-swift's start: Xavier-uniform weights, biases N(0, 1e-6).
    for linear in (adapter.linear1, adapter.linear2):
        bound = math.sqrt(6 / sum(linear.weight.shape))
        assert linear.weight.abs().max() <= bound and linear.weight.std() > bound / 4
        assert linear.bias.abs().max() < 1e-5
    x = torch.randn(3, 32)
    with torch.no_grad():
        h = type(mlp).forward(mlp, x)  # the MLP alone (no hook)
        by_hand = h + torch.nn.functional.gelu(h @ adapter.linear1.weight.T + adapter.linear1.bias) \
            @ adapter.linear2.weight.T + adapter.linear2.bias
        assert torch.allclose(mlp(x), by_hand, atol=1e-6)
        # W2 is not zero at the start: the output already moves, as in ms-swift.
        assert not torch.allclose(model(IDS).logits, before, atol=1e-4)


def sft(model: str, out, *extra: str, steps: int = 2) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#8", "--max_steps", str(steps), "--save_steps", "1",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none",
            "--dtype", "fp32", "--eval_strategy", "no", "--tuner_type", "adapter", "--adapter_length", "16",
            "--adapter_act", "gelu", *extra]


def by_hand_logits(base_dir: str, checkpoint) -> torch.Tensor:
    """The base model with the saved bottlenecks applied by forward hooks written here from the formula."""
    saved = load_file(checkpoint / "default" / "adapter_model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    for i, layer in enumerate(base.model.layers):
        p = {k.split("adapter_default.")[1]: v for k, v in saved.items() if k.startswith(f"model.layers.{i}.")}
        layer.mlp.register_forward_hook(lambda m, a, h, p=p: h + torch.nn.functional.gelu(
            h @ p["linear1.weight"].T + p["linear1.bias"]) @ p["linear2.weight"].T + p["linear2.bias"])
    with torch.no_grad():
        return base(IDS).logits


def test_sft_trains_the_adapters_saves_ms_swifts_layout_resumes_exactly_and_infers(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(sft(tiny_model_dir, out, steps=3)) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    config = json.loads((run_dir / "checkpoint-3" / "default" / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("swift_type", "dim", "adapter_length", "act_layer", "hidden_pos")} == {
        "swift_type": "ADAPTER", "dim": 32, "adapter_length": 16, "act_layer": "gelu", "hidden_pos": 0}
    first, straight = (load_file(run_dir / f"checkpoint-{n}" / "default" / "adapter_model.safetensors")
                       for n in (1, 3))
    assert straight.keys() == KEYS
    assert all(not torch.equal(first[k], straight[k]) for k in KEYS)  # every adapter weight trains
    model, _ = load_for_inference(None, [], str(run_dir / "checkpoint-3"), "fp32")
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits, by_hand_logits(tiny_model_dir, run_dir / "checkpoint-3"),
                              atol=1e-5)
    shutil.rmtree(run_dir / "checkpoint-3")
    shutil.rmtree(run_dir / "checkpoint-2")
    assert main(sft(tiny_model_dir, out, "--resume_from_checkpoint", str(run_dir / "checkpoint-1"), steps=3)) == 0
    resumed = load_file(run_dir / "checkpoint-3" / "default" / "adapter_model.safetensors")
    for key in KEYS:
        assert torch.equal(straight[key], resumed[key]), key


def test_dpo_trains_the_adapter_against_the_precomputed_reference(tiny_model_dir, tmp_path):
    argv = ["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-pref#4", "--max_steps",
            "1", "--output_dir", str(tmp_path), "--report_to", "none", "--dtype", "fp32", "--eval_strategy", "no",
            "--tuner_type", "adapter", "--adapter_length", "8"]
    assert main(argv) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert load_file(run_dir / "checkpoint-1" / "default" / "adapter_model.safetensors").keys() == KEYS


@pytest.mark.parametrize("argv, message", [
    (["rlhf", "--rlhf_type", "dpo", "--dataset", "arith-pref#4", "--precompute_ref_log_probs", "false"],
     "keep --precompute_ref_log_probs true"),
    (["rlhf", "--rlhf_type", "grpo", "--dataset", "arith-prompts#4"], "--tuner_type adapter with grpo"),
    (["sft", "--dataset", "arith-sft#4", "--modules_to_save", "embed_tokens"], "--modules_to_save with --tuner_type"),
    (["sft", "--dataset", "arith-sft#4", "--adapter_act", "nope"], "--adapter_act nope: expected one of"),
    (["sft", "--dataset", "arith-sft#4", "--adapter_length", "0"], "--adapter_length 0: expected a positive"),
])
def test_what_the_adapter_tuner_cannot_do_stops_with_a_reason(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main([*argv, "--model", tiny_model_dir, "--output_dir", str(tmp_path), "--report_to", "none",
                 "--max_steps", "1", "--tuner_type", "adapter"]) == 2
    assert message in capsys.readouterr().err
