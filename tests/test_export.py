"""`alignkit export`: merged == base + adapter, the directory loads with plain transformers (alignkit
blocked from import), checkpoints export beside themselves and are never overwritten, bitsandbytes
quantisation really stores 4/8-bit weights that load back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import save_random_lora
from safetensors import safe_open

from alignkit.cli import main

INPUT_IDS = torch.tensor([[1, 5, 9, 40, 77, 120, 200, 3], [2, 8, 16, 32, 64, 128, 256, 300]])  # (2, 8)


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits  # (2, 8, V)


@pytest.fixture(scope="module")
def adapter(tiny_chat_model_dir, tmp_path_factory):
    return save_random_lora(tiny_chat_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="module")
def merged_dir(tiny_chat_model_dir, adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    assert main(["export", "--model", tiny_chat_model_dir, "--adapters", adapter, "--merge_lora", "true",
                 "--output_dir", str(out)]) == 0
    return out


def test_merged_logits_equal_base_plus_adapter(tiny_chat_model_dir, adapter, merged_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).eval()
    base_logits = logits_of(base)
    unmerged = logits_of(PeftModel.from_pretrained(base, adapter).eval())
    merged = logits_of(AutoModelForCausalLM.from_pretrained(merged_dir).eval())
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert (unmerged - base_logits).abs().max() > 1e-2  # the adapter really changes the model


def test_export_directory_is_a_plain_hf_model(merged_dir):
    names = {p.name for p in merged_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"}
    with safe_open(merged_dir / "model.safetensors", "pt") as weights:
        assert not [k for k in weights.keys() if "lora" in k]
    assert json.loads((merged_dir / "generation_config.json").read_text())["eos_token_id"] is not None


def test_export_loads_and_generates_with_plain_transformers_without_alignkit(tiny_chat_model_dir, adapter, merged_dir,
                                                                            tmp_path):
    script = f"""
import sys, json
sys.modules["alignkit"] = None  # any import of alignkit now fails
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(merged_dir)!r})
model = AutoModelForCausalLM.from_pretrained({str(merged_dir)!r}).eval()
ids = tok.apply_chat_template([{{"role": "user", "content": "What is 12 + 30?"}}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
out = model.generate(ids, max_new_tokens=10, do_sample=False)
print(json.dumps(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])

    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_for_inference

    model, tokenizer = load_for_inference(tiny_chat_model_dir, [adapter], None, "fp32")
    expected = generate_answers(model, ChatEncoder(tokenizer, max_length=512),
                                [[{"role": "user", "content": "What is 12 + 30?"}]], max_new_tokens=10)[0]
    assert answer == expected and answer


def test_ckpt_dir_export_goes_beside_the_checkpoint_and_never_overwrites(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "rlhf",
                "--model",
                tiny_model_dir,
                "--dataset",
                "arith-pref#4",
                "--val_dataset",
                "arith-pref:test#2",
                "--max_steps",
                "1",
                "--output_dir",
                str(out),
                "--report_to",
                "none",
                "--dtype",
                "fp32",
                "--learning_rate",
                "1e-2",
            ]
        )
        == 0
    )
    (checkpoint,) = out.glob("v0-*/checkpoint-1")
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true"]) == 0
    merged = checkpoint.with_name("checkpoint-1-merged")
    assert (merged / "model.safetensors").is_file()
    before = (merged / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    # Again: ms-swift keeps the merged directory and uses it; nothing is written.
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true"]) == 0
    assert f"exported: {merged}" in capsys.readouterr().out
    assert (merged / "model.safetensors").stat().st_mtime_ns == before
    # Anything else already there is never overwritten.
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true", "--output_dir",
                 str(checkpoint)]) == 2
    assert "exists; alignkit never overwrites" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["export", "--adapters", "a", "b", "--merge_lora", "true"], "merges one adapter at a time"),
    (["export", "--ckpt_dir", "{adapter}"], "nothing to export"),
])
def test_export_errors_say_what_to_do(adapter, argv, message, capsys):
    code = main([a.format(adapter=adapter) for a in argv])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def model64_dir(tmp_path_factory):
    """bitsandbytes' CPU 4-bit kernels quantise in blocks of 64 input features: hidden size 64, not 32."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny64")
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, hidden_size=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("bits, layer, tolerance", [(4, "Linear4bit", 0.12), (8, "Linear8bitLt", 0.012)])
def test_bnb_quantised_export_stores_low_bit_weights_close_to_the_originals(model64_dir, tmp_path, bits, layer,
                                                                          tolerance):
    bnb = pytest.importorskip("bitsandbytes", reason="quantised export needs bitsandbytes: pip install -e '.[quant]'")
    from transformers import AutoModelForCausalLM

    out = tmp_path / f"int{bits}"
    assert main(["export", "--model", model64_dir, "--quant_bits", str(bits), "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config[f"load_in_{bits}bit"] is True
    with safe_open(out / "model.safetensors", "pt") as weights:
        stored = weights.get_tensor("model.layers.0.mlp.up_proj.weight")  # (128, 64) in full precision
    assert stored.numel() * stored.element_size() == 128 * 64 * bits // 8  # bytes: fp32 would take 128 * 64 * 4

    original = AutoModelForCausalLM.from_pretrained(model64_dir).eval()
    quantised = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
    linear = quantised.model.layers[0].mlp.up_proj
    assert type(linear).__name__ == layer
    if bits == 4:  # NF4 codes times per-block absmax
        weight = bnb.functional.dequantize_4bit(linear.weight.data, linear.weight.quant_state).float()
    else:  # int8 rows times their absmax / 127
        weight = linear.weight.data.float() * linear.weight.SCB[:, None] / 127
    exact = original.model.layers[0].mlp.up_proj.weight
    assert (weight - exact).abs().mean() / exact.abs().mean() < tolerance
    reference, approximate = logits_of(original), logits_of(quantised)
    assert (approximate - reference).abs().mean() / reference.abs().mean() < 1.5 * tolerance
    assert (approximate.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


def test_reward_model_exports_merged_with_its_value_head_and_scores_the_same(tiny_model_dir, tmp_path):
    from alignkit.models.reward_model import VALUE_HEAD_FILE, load_reward_model

    out = tmp_path / "out"
    assert main(["rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#4",
                 "--val_dataset", "arith-pref:test#2", "--max_steps", "2", "--batch_size", "2",
                 "--learning_rate", "1e-2", "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32"]) == 0
    (checkpoint,) = out.glob("v0-*/checkpoint-2")
    assert main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true"]) == 0
    merged = checkpoint.with_name("checkpoint-2-merged")
    assert (merged / VALUE_HEAD_FILE).is_file() and not (merged / "adapter_config.json").exists()

    prompt = [{"role": "user", "content": "What is 12 + 30?"}]
    conversations = [prompt + [{"role": "assistant", "content": f"Answer: {n}"}] for n in (42, 41, 7)]
    before = load_reward_model(str(checkpoint), dtype="fp32").score(conversations)
    after = load_reward_model(str(merged), dtype="fp32").score(conversations)
    assert after == pytest.approx(before, abs=1e-5)
    assert max(before) - min(before) > 1e-4  # the scores tell the answers apart
