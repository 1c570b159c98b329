"""--torch_dtype loads the weights in its precision (frozen weights stay in it, what trains is fp32), and QLoRA
(--quant_method bnb --quant_bits 4|8) trains an adapter on a bitsandbytes-quantised base, on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture
def trained(monkeypatch):
    """What the offline loop is handed (model, algorithm, config), captured on the way in."""
    import alignkit.training.run as run_module

    seen: dict = {}
    real = run_module.train

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(run_module, "train", spy)
    return seen


@pytest.fixture(scope="module")
def model64_dir(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels quantise in blocks of 64 input features: hidden size 64, not 32."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny64")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, hidden_size=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def common(model: str, out: Path) -> list[str]:
    return ["--model", model, "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1", "--learning_rate",
            "1e-2", "--output_dir", str(out), "--report_to", "none", "--lora_dropout", "0"]


def test_torch_dtype_bfloat16_loads_bf16_weights_and_trains_fp32_lora(tiny_model_dir, tmp_path, trained):
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--dataset", "arith-pref#8", "--torch_dtype", "bfloat16",
                 "--batch_size", "2", *common(tiny_model_dir, out)]) == 0
    model = trained["model"]
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert set(trainable.values()) == {torch.float32} and all("lora_" in n for n in trainable)
    run_dir = run_dir_of(out)
    assert all(math.isfinite(x) for x in losses(run_dir)) and len(losses(run_dir)) == 2
    assert json.loads((run_dir / "args.json").read_text())["dtype"] == "bf16"  # bf16 autocast with it
    # AdamW's states follow the fp32 parameters; the saved adapter is fp32 and has moved.
    state = torch.load(run_dir / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    assert {s["exp_avg"].dtype for s in state.values()} == {torch.float32}
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert {t.dtype for t in second.values()} == {torch.float32}
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_dtype_bf16_alone_keeps_fp32_weights_under_autocast(tiny_model_dir, tmp_path, trained):
    out = tmp_path / "out"
    assert main(["sft", "--dataset", "arith-sft#4", "--dtype", "bf16", *common(tiny_model_dir, out)]) == 0
    assert {p.dtype for p in trained["model"].parameters()} == {torch.float32}
    assert trained["config"].mixed_precision == "bf16"


def test_full_fine_tuning_in_bf16_trains_fp32_master_weights_and_keeps_the_reference_bf16(tiny_model_dir, tmp_path,
                                                                                          trained):
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--dataset", "arith-pref#8", "--torch_dtype", "bf16", "--train_type",
                 "full", "--precompute_ref_log_probs", "false", "--batch_size", "2",
                 *common(tiny_model_dir, out)]) == 0
    model, algorithm = trained["model"], trained["algorithm"]
    assert {p.dtype for p in model.parameters()} == {torch.float32} and all(p.requires_grad
                                                                             for p in model.parameters())
    assert {p.dtype for p in algorithm.reference.frozen_model.parameters()} == {torch.bfloat16}
    assert all(math.isfinite(x) for x in losses(run_dir_of(out)))


def test_torch_dtype_and_a_different_dtype_conflict(tiny_model_dir, tmp_path, capsys):
    assert main(["sft", "--dataset", "arith-sft#4", "--torch_dtype", "bfloat16", "--dtype", "fp32",
                 *common(tiny_model_dir, tmp_path)]) == 2
    assert "--torch_dtype sets the compute precision too" in capsys.readouterr().err


@pytest.mark.parametrize("bits, layer, weight_class", [(4, "Linear4bit", "Params4bit"),
                                                       (8, "Linear8bitLt", "Int8Params")])
def test_qlora_trains_an_adapter_on_a_quantised_base(model64_dir, tmp_path, trained, bits, layer, weight_class):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--dataset", "arith-pref#8", "--batch_size", "2", "--quant_method",
                 "bnb", "--quant_bits", str(bits), "--bnb_4bit_quant_type", "nf4", *common(model64_dir, out)]) == 0
    model = trained["model"]
    quantised = [m for m in model.modules() if type(m).__name__ == layer]
    assert quantised and all(type(m.weight).__name__ == weight_class for m in quantised)
    assert quantised[0].weight.dtype in (torch.uint8, torch.int8)  # the stored weights are low-bit codes
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    run_dir = run_dir_of(out)
    assert all(math.isfinite(x) for x in losses(run_dir))
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the adapter learns
    assert any("lora_B" in k and second[k].abs().max() > 0 for k in second)


@pytest.mark.parametrize("bits, axis", [(4, None), (2, "0")])
def test_hqq_qlora_trains_an_adapter_on_hqq_quantised_linears(model64_dir, tmp_path, trained, caplog, bits, axis):
    """ms-swift's `--quant_method hqq --quant_bits N [--hqq_axis A]` (examples/train/qlora/hqq.sh): every linear
    layer but the LM head becomes hqq's HQQLinear at N bits, LoRA ("all-linear") trains on all of them."""
    pytest.importorskip("hqq")
    import logging

    from hqq.core.quantize import HQQLinear

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(["sft", "--dataset", "arith-sft#4", "--quant_method", "hqq", "--quant_bits", str(bits),
                     *(["--hqq_axis", axis] if axis else []), "--eval_strategy", "no", *common(model64_dir, out)]) == 0
    model = trained["model"]
    quantised = [m for m in model.modules() if isinstance(m, HQQLinear)]
    assert len(quantised) == 2 * 7  # two layers x q/k/v/o/gate/up/down
    assert {m.meta["nbits"] for m in quantised} == {bits}
    assert {m.meta["axis"] for m in quantised} == {int(axis or 1)}
    assert not isinstance(model.get_output_embeddings(), HQQLinear)
    lora_wrapped = [m for m in model.modules() if type(m).__name__ == "HqqLoraLinear"]
    assert len(lora_wrapped) == len(quantised)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    assert f"quantised by HQQ to {bits} bits" in caplog.text
    run_dir = run_dir_of(out)
    assert all(math.isfinite(x) for x in losses(run_dir))
    first, second = (load_file(run_dir / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the adapter learns


def test_qlora_4bit_options_reach_bitsandbytes(model64_dir, tmp_path, trained):
    pytest.importorskip("bitsandbytes")
    assert main(["sft", "--dataset", "arith-sft#4", "--quant_method", "bnb", "--quant_bits", "4",
                 "--bnb_4bit_quant_type", "fp4", "--bnb_4bit_use_double_quant", "false", "--bnb_4bit_compute_dtype",
                 "float32", *common(model64_dir, tmp_path / "out")]) == 0
    import bitsandbytes as bnb

    layer = next(m for m in trained["model"].modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.quant_type == "fp4" and layer.weight.quant_state.nested is False
    assert layer.compute_dtype == torch.float32


def test_qlora_gradients_flow_through_the_base_after_an_eval_pass(model64_dir):
    """The reference log-prob pass runs the quantised base in eval mode without gradients; training afterwards
    must still get the base layers' input gradients (W^T g), which bitsandbytes' CPU inference kernel lacks."""
    bnb = pytest.importorskip("bitsandbytes")
    from alignkit.models.load import load_causal_lm
    from alignkit.models.load_options import LoadOptions
    from alignkit.models.quantization import bnb_config, prepare_quantized_for_training

    options = LoadOptions(quantization=bnb_config(4, compute_dtype=torch.bfloat16))
    model = load_causal_lm(model64_dir, options=options)
    prepare_quantized_for_training(model)
    with torch.no_grad():
        model.eval()(torch.tensor([[5, 17, 42, 3]]))
    model.train()
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    x = torch.randn(3, 64, requires_grad=True)
    layer(x).sum().backward()
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()  # (128, 64)
    assert torch.allclose(x.grad, weight.sum(0).expand(3, -1), atol=0.05 * weight.abs().max().item())


@pytest.mark.parametrize("argv, message", [
    (["--quant_method", "eetq", "--quant_bits", "8"], "--quant_method eetq is not supported for training; use "
                                                      "--quant_method bnb"),
    (["--quant_method", "bnb", "--quant_bits", "2"], "bitsandbytes quantises to 4 or 8 bits"),
    (["--quant_method", "bnb", "--quant_bits", "4", "--train_type", "full"], "quantised weights cannot be trained"),
    (["--quant_method", "hqq", "--quant_bits", "8", "--train_type", "full"], "quantised weights cannot be trained"),
])
def test_quantisation_alignkit_cannot_train_stops_before_loading(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main(["sft", "--dataset", "arith-sft#4", *argv, *common(tiny_model_dir, tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_quant_bits_without_a_method_loads_unquantised_and_says_so(tiny_model_dir, tmp_path, trained, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(["sft", "--dataset", "arith-sft#4", "--quant_bits", "4", *common(tiny_model_dir, tmp_path)]) == 0
    assert "without --quant_method: the model loads unquantised" in caplog.text
    assert not any(type(m).__name__ == "Linear4bit" for m in trained["model"].modules())


def test_vision_language_lora_in_bf16_weights(tmp_path):
    from tiny_vlms import build_llava, write_images

    model_dir = tmp_path / "llava"
    build_llava(model_dir)
    names = [Path(p).name for p in write_images(tmp_path)]
    rows = [{"messages": [{"role": "user", "content": f"<image>What is {i} + 1?"},
                          {"role": "assistant", "content": f"Answer: {i + 1}"}],
             "rejected_response": f"Answer: {i + 2}", "images": [names[i % len(names)]]} for i in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "dpo", "--dataset", str(data), "--torch_dtype", "bfloat16", "--batch_size",
                 "2", *common(str(model_dir), out)]) == 0
    run_dir = run_dir_of(out)
    assert all(math.isfinite(x) for x in losses(run_dir))
    weights = load_file(run_dir / "checkpoint-2" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


@pytest.mark.parametrize("tuner", ["lora", "vera"])
def test_grpo_policy_in_bf16_weights_with_peft_tuners(tiny_model_dir, tmp_path, tuner):
    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#4",
                 "--max_completion_length", "6", "--reward_funcs", "format", "--num_generations", "2", "--batch_size",
                 "4", "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1", "--learning_rate", "1e-2",
                 "--torch_dtype", "bfloat16", "--tuner_type", tuner, "--vera_rank", "8", "--output_dir", str(out),
                 "--report_to", "none"]) == 0
    run_dir = run_dir_of(out)
    assert all(math.isfinite(x) for x in losses(run_dir))
    config = json.loads((run_dir / "checkpoint-2" / "adapter_config.json").read_text())
    assert config["peft_type"] == tuner.upper()


def test_quantization_bit_is_ms_swift_2x_qlora(model64_dir, tmp_path, trained, capsys):
    """shared/seeds 003: `--quantization_bit 4` (bitsandbytes) is --quant_method bnb --quant_bits 4."""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "out"
    assert main(["sft", "--dataset", "arith-sft#4", "--quantization_bit", "4", *common(model64_dir, out)]) == 0
    assert any(type(m).__name__ == "Linear4bit" for m in trained["model"].modules())
    saved = json.loads((run_dir_of(out) / "args.json").read_text())
    assert (saved["quant_method"], saved["quant_bits"]) == ("bnb", 4)
    assert main(["sft", "--quantization_bit", "4", "--quant_bits", "8", *common(model64_dir, tmp_path / "x")]) == 2
    assert "--quantization_bit 4 is --quant_method bnb --quant_bits 4" in capsys.readouterr().err
