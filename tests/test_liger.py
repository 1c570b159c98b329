"""--use_liger_kernel: Liger's kernels on the loaded model where a CUDA GPU and liger-kernel are present, a clear error
before any data is loaded where not (alignkit/models/liger.py)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from alignkit.cli import main
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError
from alignkit.models import liger


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs Liger's kernels")
def test_on_a_cpu_the_run_stops_before_loading_any_data(tmp_path, capsys):
    # The dataset does not exist: the liger check must come first.
    code = main(["sft", "--use_liger_kernel", "true", "--dataset", str(tmp_path / "missing.jsonl"),
                 "--output_dir", str(tmp_path / "out"), "--max_steps", "1"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--use_liger_kernel: Liger's kernels are Triton GPU kernels and need a CUDA GPU" in err
    assert "missing.jsonl" not in err


def test_without_the_package_the_error_says_to_install_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "liger_kernel" else real(name, *a))
    with pytest.raises(AlignkitError, match="--use_liger_kernel needs the liger-kernel package.*pip install "
                                            "liger-kernel"):
        liger.check_liger_available()


def test_the_flag_applies_the_kernels_when_the_model_is_prepared(monkeypatch):
    from alignkit.training import model_setup

    applied = []
    monkeypatch.setattr(model_setup, "apply_liger_kernels", applied.append)
    model = torch.nn.Linear(2, 2)
    model_setup.prepare_loaded(model, RunArguments(use_liger_kernel=True, gradient_checkpointing=False))
    assert applied == [model]
    model_setup.prepare_loaded(model, RunArguments(gradient_checkpointing=False))
    assert applied == [model]  # off by default


def test_a_model_type_liger_does_not_cover_stops_naming_it(monkeypatch):
    monkeypatch.setattr(liger, "liger_model_types", lambda: ["llama", "qwen2"])
    model = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    with pytest.raises(AlignkitError, match="Liger has no kernels for model type 'gpt2'; it has them for llama, qwen2"):
        liger.apply_liger_kernels(model)


def test_the_kernels_replace_a_tiny_llamas_modules(monkeypatch):
    pytest.importorskip("liger_kernel.transformers")
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    # Liger also patches the llama module's classes and RoPE function: restored after the test, so that later
    # tests in this process run transformers' own code on the CPU.
    for name in ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP"):
        monkeypatch.setattr(modeling_llama, name, getattr(modeling_llama, name))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    forward = model.forward
    assert liger.apply_liger_kernels(model) == "llama"
    assert model.model.norm.forward.__func__ is LigerRMSNorm.forward
    for layer in model.model.layers:
        assert layer.mlp.forward.__func__ is LigerSwiGLUMLP.forward
        assert layer.input_layernorm.forward.__func__ is LigerRMSNorm.forward
    assert model.forward == forward  # no fused linear cross-entropy: the forward still returns logits
