"""ms-swift's model-loading flags: --attn_impl, --experts_impl and --router_aux_loss_coef (mixture-of-experts),
--gradient_checkpointing_kwargs, --vit_gradient_checkpointing, --vit_lr / --aligner_lr, --rope_scaling and
--max_model_len."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.config.run import RunArguments


def run_dir_of(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


@pytest.fixture
def trained(monkeypatch):
    import alignkit.training.run as run_module

    seen: dict = {}
    real = run_module.train

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(run_module, "train", spy)
    return seen


def sft(model: str, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#4", "--max_steps", "1", "--logging_steps", "1",
            "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32", *extra]


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory):
    """A two-layer Mixtral (4 experts, 2 per token) with the tiny ChatML tokenizer."""
    from conftest import build_tiny_tokenizer
    from transformers import MixtralConfig, MixtralForCausalLM

    path = tmp_path_factory.mktemp("tiny-moe")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    MixtralForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_attn_impl_sets_the_attention_the_model_loads_with(tiny_model_dir, tmp_path, trained):
    assert main(sft(tiny_model_dir, tmp_path / "out", "--attn_impl", "eager")) == 0
    assert trained["model"].config._attn_implementation == "eager"


def test_flash_attention_without_its_package_stops_naming_it(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    assert main(sft(tiny_model_dir, tmp_path / "out", "--attn_impl", "flash_attn")) == 2
    assert "--attn_impl flash_attention_2 needs the flash-attn package" in capsys.readouterr().err


def test_attention_without_a_4d_mask_runs_padded_and_says_why(tiny_model_dir, caplog):
    from transformers import AutoModelForCausalLM

    from alignkit.training.speedups import choose_layout

    # sdpa, eager, flex and flash attention all pack; transformers' paged eager attention takes no packed mask.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="paged|eager")
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        layout, reasons = choose_layout(RunArguments(), "dpo", model)
    assert layout.padding_free is False and layout.prefix_sharing is False
    assert "needs sdpa, eager, flex or flash attention, not paged|eager" in caplog.text


def test_flex_attention_cannot_train_on_a_cpu(tiny_model_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU trains flex attention")
    assert main(sft(tiny_model_dir, tmp_path / "out", "--attn_impl", "flex_attention")) == 2
    assert "--attn_impl flex_attention cannot train on a CPU" in capsys.readouterr().err


def test_moe_flags_on_a_dense_model_say_they_have_no_effect(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main(sft(tiny_model_dir, tmp_path / "out", "--router_aux_loss_coef", "0.01", "--experts_impl",
                        "eager")) == 0
    assert "--router_aux_loss_coef 0.01 has no effect: the model has no experts" in caplog.text
    assert "--experts_impl eager has no effect" in caplog.text


@pytest.mark.parametrize("padding_free", ["true", "false"])
def test_router_aux_loss_is_added_to_a_moe_models_loss(tiny_moe_dir, tmp_path, padding_free):
    runs = {}
    for coef in ("0", "0.5"):
        out = tmp_path / f"coef{coef}"
        # peft adapts the fused expert weights too, which it allows only without LoRA dropout.
        assert main(sft(tiny_moe_dir, out, "--router_aux_loss_coef", coef, "--experts_impl", "eager",
                        "--padding_free", padding_free, "--lora_dropout", "0")) == 0
        runs[coef] = records(run_dir_of(out))[0]
    with_aux = runs["0.5"]
    # Mixtral's load-balancing loss is num_experts x sum(f_i P_i) >= 1 (equal to 1 when perfectly balanced).
    assert with_aux["aux_loss"] >= 0.5 * 1.0 - 1e-4 and "aux_loss" not in runs["0"]
    assert with_aux["loss"] == pytest.approx(runs["0"]["loss"] + with_aux["aux_loss"], rel=1e-4)


def test_gradient_checkpointing_kwargs_reach_the_model(tiny_model_dir, tmp_path, trained, monkeypatch):
    from transformers import PreTrainedModel

    seen = []
    real = PreTrainedModel.gradient_checkpointing_enable

    def spy(self, gradient_checkpointing_kwargs=None, **kwargs):
        seen.append(gradient_checkpointing_kwargs)
        return real(self, gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", spy)
    assert main(sft(tiny_model_dir, tmp_path / "out", "--gradient_checkpointing", "true",
                    "--gradient_checkpointing_kwargs", '{"use_reentrant": true}')) == 0
    assert seen == [{"use_reentrant": True}]
    assert all(math.isfinite(r["loss"]) for r in records(run_dir_of(tmp_path / "out")) if "loss" in r)


def test_vit_gradient_checkpointing_is_set_apart_from_the_language_models(tmp_path):
    from tiny_vlms import build_llava

    from alignkit.training.model_setup import enable_checkpointing
    from alignkit.vision.model import load_vision_model, part_of

    path = tmp_path / "llava"
    build_llava(path)
    model = load_vision_model(str(path))
    args = RunArguments(gradient_checkpointing=True, vit_gradient_checkpointing=False)
    enable_checkpointing(model, args, vision=True)
    flags = {part_of(n): m.gradient_checkpointing for n, m in model.named_modules()
             if type(m).__name__.endswith("Layer") and hasattr(m, "gradient_checkpointing")}
    assert flags == {"vit": False, "llm": True}


def test_vit_and_aligner_learning_rates_by_part():
    from alignkit.training.model_setup import parameter_learning_rates

    args = RunArguments(learning_rate=1e-4, vit_lr=1e-6, aligner_lr=1e-5, lorap_lr_ratio=10)
    rate = parameter_learning_rates(args, vision=True)
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    assert rate("model.vision_tower.encoder.layers.0.mlp.fc1.weight", weight) == 1e-6
    assert rate("model.multi_modal_projector.linear_1.weight", weight) == 1e-5
    assert rate("model.language_model.layers.0.mlp.up_proj.lora_B.default.weight", weight) == pytest.approx(1e-3)
    assert rate("model.vision_tower.encoder.layers.0.mlp.fc1.lora_B.default.weight", weight) == pytest.approx(1e-5)
    assert parameter_learning_rates(RunArguments(vit_lr=1e-6), vision=False) is None  # a text model: no effect


def test_rope_scaling_and_max_model_len_as_ms_swift_writes_them():
    from transformers import LlamaConfig

    from alignkit.config.model_checks import parse_rope_scaling
    from alignkit.models.load_options import set_context_length

    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                         max_position_embeddings=512, rope_theta=5e5)
    set_context_length(config, parse_rope_scaling("yarn"), 1500)
    assert config.rope_parameters == {"rope_type": "yarn", "rope_theta": 5e5, "factor": 3.0,
                                      "original_max_position_embeddings": 512}
    assert config.max_position_embeddings == 1500
    config = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                         max_position_embeddings=512)
    set_context_length(config, parse_rope_scaling('{"type": "linear", "factor": 2.0}'), None)
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 2.0
    assert config.max_position_embeddings == 1024


def test_rope_scaling_loads_into_the_trained_model(tiny_model_dir, tmp_path, trained):
    assert main(sft(tiny_model_dir, tmp_path / "out", "--rope_scaling", "linear", "--max_model_len", "1024")) == 0
    config = trained["model"].config
    assert config.rope_parameters["factor"] == 2.0 and config.max_position_embeddings == 1024


@pytest.mark.parametrize("argv, message", [
    (["--rope_scaling", "ntk"], "expected linear, dynamic, yarn or a JSON object"),
    (["--rope_scaling", "yarn"], "without a factor needs --max_model_len"),
    (["--gradient_checkpointing_kwargs", "[1]"], "expected a JSON object"),
    (["--vit_lr", "0"], "expected a positive learning rate"),
])
def test_bad_loading_flags_stop_with_the_flag_named(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main(sft(tiny_model_dir, tmp_path / "out", *argv)) == 2
    assert message in capsys.readouterr().err


def test_model_loss_terms_keep_ktos_step_wide_reference_point():
    # The loop asks the algorithm for its rows, KL terms and a per-step copy (KTO's z); the wrapper that adds the
    # model's loss terms (router aux loss, AdaLoRA's penalty) must pass them through and stay wrapped.
    import dataclasses

    from alignkit.training.model_setup import WithModelLosses

    @dataclasses.dataclass(frozen=True)
    class StepWide:
        rows: str = "unpaired"
        needs_kl: bool = True
        loss_unit: str = "examples"
        z: float = 0.0

        def for_step(self, kl_sum, count):
            return dataclasses.replace(self, z=kl_sum / count)

        def kl_terms(self, model, batch):
            return torch.ones(2)

        def loss(self, model, batch):
            return torch.tensor(self.z), {"loss": self.z}

    wrapped = WithModelLosses(StepWide(), (("aux_loss", lambda: torch.tensor(1.0)),))
    assert wrapped.rows == "unpaired" and wrapped.needs_kl and wrapped.kl_terms(None, None).tolist() == [1.0, 1.0]
    step = wrapped.for_step(3.0, 2.0)
    assert isinstance(step, WithModelLosses)
    loss, metrics = step.loss(None, None)
    assert float(loss) == 2.5 and metrics == {"loss": 2.5, "aux_loss": 1.0}
