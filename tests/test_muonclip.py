"""--optimizer muonclip: ms-swift's MuonClip (swift/optimizers/muonclip.py): its step worked out by hand, QK-Clip
rescaling exactly the q/k weights (LoRA's adapters among them) by sqrt(tau / S_max), and the largest attention
logit read from the model's own forwards."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model, build_tiny_tokenizer

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.training.muonclip import AttentionLogitMax, MuonClip, muonclip_optim_args
from alignkit.training.optimizers import check_optimizer, make_optimizer
from alignkit.training.runner import LoopConfig


def tiny(attn: str = "eager"):
    model = build_tiny_model(build_tiny_tokenizer(), init_std=0.3)
    model.config._attn_implementation = attn
    return model


def forward_backward(model) -> None:
    ids = torch.tensor([[5, 9, 14, 3, 7, 21, 40, 2], [8, 2, 30, 11, 6, 6, 1, 9]])
    model(input_ids=ids, labels=ids).loss.backward()


def test_the_step_is_ms_swifts_muon_momentum_sgd_and_decay_worked_out_by_hand():
    model = tiny()
    config = LoopConfig(optimizer="muonclip", learning_rate=0.1, weight_decay=0.05,
                        optim_args="momentum=0.9,rms_scale_factor=0.3,qk_clip_tau=1e9")
    optimizer = make_optimizer(model, config)
    named = dict(model.named_parameters())
    q, o, norm = (named["model.layers.0.self_attn.q_proj.weight"], named["model.layers.0.self_attn.o_proj.weight"],
                  named["model.layers.0.input_layernorm.weight"])
    before = {name: p.detach().clone() for name, p in (("q", q), ("o", o), ("norm", norm))}
    forward_backward(model)
    grads = {"q": q.grad.clone(), "o": o.grad.clone(), "norm": norm.grad.clone()}
    optimizer.step()
    for name, p in (("q", q), ("o", o)):  # Muon: NS(buf) x 0.3 sqrt(max(n, m)); buf = grad on the first step
        update = MuonClip.newton_schulz(grads[name]) * 0.3 * math.sqrt(max(p.shape))
        assert torch.allclose(p, before[name] * (1 - 0.1 * 0.05) - 0.1 * update, atol=1e-6)
    # A norm scale is not a matrix: momentum SGD, decayed too (ms-swift decays every parameter).
    assert torch.allclose(norm, before["norm"] * (1 - 0.1 * 0.05) - 0.1 * grads["norm"], atol=1e-6)
    groups = {(g["apply_muon"], g["is_qk"]): len(g["params"]) for g in optimizer.param_groups}
    # q, k of 2 layers; their o, v, gate, up, down; the embedding (tied LM head) and 5 norm scales
    assert groups == {(True, True): 4, (True, False): 10, (False, False): 6}


@pytest.mark.parametrize("max_logit, clipped", [(400.0, True), (100.0, False), (50.0, False)])
def test_qk_clip_rescales_exactly_the_q_and_k_weights_by_sqrt_tau_over_the_max_logit(max_logit, clipped):
    model = tiny()
    optimizer = make_optimizer(model, LoopConfig(optimizer="muonclip", learning_rate=0.0, weight_decay=0.0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    forward_backward(model)
    optimizer.step(max_logits=max_logit)  # tau is ms-swift's default 100: gamma = 100 / 400, sqrt = 0.5
    for name, p in model.named_parameters():
        qk = "q_proj" in name or "k_proj" in name
        factor = 0.5 if qk and clipped else 1.0
        assert torch.equal(p, before[name] * factor), name


def test_with_lora_the_clip_scales_the_q_and_k_adapters_and_never_the_frozen_base(caplog):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              init_lora_weights=False))
    with caplog.at_level(logging.INFO, logger="alignkit"):
        optimizer = make_optimizer(model, LoopConfig(optimizer="muonclip", learning_rate=0.0, weight_decay=0.0,
                                                     optim_args="qk_clip_tau=0.5"))
    assert "QK-Clip rescales the trainable q_proj/k_proj adapter matrices (lora_A and lora_B)" in caplog.text
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    forward_backward(model)
    seen = optimizer.logits.value.item()  # the largest attention score of the forward (eager: exact)
    assert seen > 0.5
    optimizer.step()
    scaled = set()
    for name, p in model.named_parameters():
        if not torch.equal(p, before[name]):
            assert torch.allclose(p, before[name] * math.sqrt(0.5 / seen)), name
            scaled.add(name)
    assert scaled == {n for n in before if ("q_proj" in n or "k_proj" in n) and "lora_" in n}
    assert len(scaled) == 8  # lora_A and lora_B of q_proj and k_proj, 2 layers
    frozen = [n for n in before if ("q_proj" in n or "k_proj" in n) and "base_layer" in n]
    assert frozen and all(torch.equal(model.get_parameter(n), before[n]) for n in frozen)


def test_the_max_logit_is_softmaxs_input_max_under_eager_and_ms_swifts_norm_bound_under_sdpa():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    tracker = AttentionLogitMax()
    with tracker:
        F.scaled_dot_product_attention(q, k, v, scale=0.7)
    assert tracker.consume() == pytest.approx((q.norm(dim=-1).max() * k.norm(dim=-1).max() * 0.7).item())
    scores = q @ k.transpose(-1, -2) / 2
    with tracker:
        F.softmax(scores, dim=-1)
        torch.softmax(scores[..., :3] - 100, -1)  # smaller: the max stays
        F.softmax(torch.full((5, 5), 1e4), dim=-1)  # not 4-D: not an attention score
    assert tracker.consume() == pytest.approx(scores.max().item())
    assert tracker.consume() is None  # consumed: the next step starts afresh

    values = {}
    for attn in ("eager", "sdpa"):  # the model's own forwards, through the optimizer's hooks
        model = tiny(attn)
        optimizer = make_optimizer(model, LoopConfig(optimizer="muonclip"))
        forward_backward(model)
        values[attn] = optimizer.logits.consume()
    assert 0 < values["eager"] <= values["sdpa"]  # the bound holds over the exact maximum
    with torch.no_grad():  # an evaluation forward between steps does not count
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert optimizer.logits.consume() is None


def test_optim_args_are_read_as_ms_swift_reads_them_and_ignored_keys_are_named(caplog):
    assert muonclip_optim_args("qk_clip_tau=50, nesterov=true,momentum=0.9,ns=x") == (
        {"qk_clip_tau": 50, "nesterov": True, "momentum": 0.9}, ["ns"])
    # ms-swift's example passes qk_clip_threshold, a key its muonclip does not read (its threshold stays 100).
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        check_optimizer(LoopConfig(optimizer="muonclip", optim_args="qk_clip_threshold=10000"))
    assert ("--optim_args: qk_clip_threshold ignored, as ms-swift's muonclip ignores them; it reads weight_decay, "
            "momentum, nesterov, newton_schulz_steps, qk_clip_tau, qk_clip_enabled, rms_scale_factor (the QK-Clip "
            "threshold is qk_clip_tau, default 100)") in caplog.text
    with pytest.raises(AlignkitError, match="--optimizer muonclip trains every parameter at --learning_rate"):
        make_optimizer(tiny(), LoopConfig(optimizer="muonclip", learning_rate_of=lambda name, p: 1e-3))


def test_a_lora_run_with_ms_swifts_muonclip_example_flags_trains(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    row = {"messages": [{"role": "user", "content": "12 + 30?"}, {"role": "assistant", "content": "Answer: 42"}]}
    data.write_text((json.dumps(row) + "\n") * 4)
    out = tmp_path / "out"
    assert main(["sft", "--model", tiny_model_dir, "--dataset", str(data), "--output_dir", str(out), "--tuner_type",
                 "lora", "--optimizer", "muonclip", "--optim_args", "qk_clip_threshold=10000", "--max_steps", "2",
                 "--report_to", "none", "--split_dataset_ratio", "0", "--attn_impl", "eager"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").exists()


def test_a_run_that_clips_every_step_resumes_bit_identically(tiny_model_dir, tmp_path):
    from test_resume import assert_bit_identical, checkpoint_names, log_records, only_run_dir

    data = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{a} + 30?"}, {"role": "assistant", "content": f"{a + 30}"}]}
            for a in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["sft", "--model", tiny_model_dir, "--dataset", str(data), "--dtype", "fp32", "--report_to", "none",
            "--num_train_epochs", "2", "--logging_steps", "1", "--lora_dropout", "0", "--split_dataset_ratio", "0",
            "--optimizer", "muonclip", "--optim_args", "qk_clip_tau=0.001", "--attn_impl", "eager",
            "--learning_rate", "1e-2"]
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--save_steps", "2"]) == 0
    baseline = only_run_dir(tmp_path / "a")
    assert main([*argv, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(baseline / "checkpoint-2")]) == 0
    resumed = only_run_dir(tmp_path / "b")
    assert checkpoint_names(resumed) == ["checkpoint-4"]
    assert_bit_identical(baseline / "checkpoint-4", resumed / "checkpoint-4")
    assert log_records(resumed) == log_records(baseline)
