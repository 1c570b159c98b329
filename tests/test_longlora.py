"""--tuner_type longlora (alignkit/models/shifted_sparse_attention.py): LoRA trained with LongLoRA's shifted sparse
attention, as ms-swift runs it: in training, causal attention within quarters of the row, half of the heads on the
row shifted by half a quarter; full attention in eval mode; batches padded to --max_length."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model, build_tiny_tokenizer

from alignkit.cli import main
from alignkit.data.collate import PaddedTo, SequenceCollator
from alignkit.data.template import Encoded
from alignkit.models import shifted_sparse_attention
from alignkit.models.shifted_sparse_attention import s2_attention


def by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int) -> torch.Tensor:
    """S2-Attn token by token: (H, T, D) -> (T, H, D). Head h < H/2 sees the keys of its own group up to itself;
    head h >= H/2 works on positions shifted by group/2 (position p sits at slot (p - group/2) mod T)."""
    heads, length, dim = q.shape
    out = torch.zeros(length, heads, dim)
    for h in range(heads):
        shift = group // 2 if h >= heads // 2 else 0
        for p in range(length):
            slot = (p - shift) % length
            start = slot - slot % group
            keys = [(s + shift) % length for s in range(start, slot + 1)]  # the positions in slots start..slot
            scores = torch.stack([q[h, p] @ k[h, j] for j in keys]) / math.sqrt(dim)
            out[p, h] = torch.softmax(scores, 0) @ v[h, keys]
    return out


def test_shifted_sparse_attention_is_causal_within_groups_with_half_the_heads_shifted():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))  # (B, H, T, D): groups of 4
    training = SimpleNamespace(training=True)
    got, _ = s2_attention(training, q, k[:, :2], v[:, :2], None, scaling=1 / math.sqrt(8))  # 2 KV heads (GQA)
    for b in range(2):
        expected = by_hand(q[b], k[b, [0, 0, 1, 1]], v[b, [0, 0, 1, 1]], group=4)
        assert torch.allclose(got[b], expected, atol=1e-5)
    # Evaluation and generation attend to the whole row, as the model does without LongLoRA.
    evaluating = SimpleNamespace(training=False, num_key_value_groups=2, is_causal=True)
    full, _ = s2_attention(evaluating, q, k[:, :2], v[:, :2], None, scaling=1 / math.sqrt(8))
    reference = F.scaled_dot_product_attention(q, k[:, [0, 0, 1, 1]], v[:, [0, 0, 1, 1]], is_causal=True)
    assert torch.allclose(full, reference.transpose(1, 2), atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_llama_trains_with_it_and_evaluates_as_before(attention):
    model = build_tiny_model(build_tiny_tokenizer(), init_std=0.2)
    model.set_attn_implementation(attention)
    ids = torch.randint(4, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.eval()(ids).logits
        shifted_sparse_attention.enable(model)
        assert torch.allclose(model.eval()(ids).logits, plain, atol=1e-5)
        assert not torch.allclose(model.train()(ids).logits, plain, atol=1e-3)
    with pytest.raises(Exception, match="does not split into groups"):
        model.train()(ids[:, :14])  # groups of int(14 / 4) = 3 tokens do not divide 14


def test_batches_are_padded_to_max_length():
    batch = PaddedTo(SequenceCollator(0), 8, 0)([(0, Encoded([5, 6, 7], [-100, 6, 7])), (1, Encoded([9], [9]))])
    assert batch.input_ids.tolist() == [[5, 6, 7, 0, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0, 0, 0]]
    assert batch.attention_mask.sum(1).tolist() == [3, 1]
    assert batch.labels.tolist()[0] == [-100, 6, 7] + [-100] * 5


def sft(model: str, out, *extra: str) -> list[str]:
    return ["sft", "--model", model, "--dataset", "arith-sft#4", "--max_steps", "1", "--logging_steps", "1",
            "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32", "--eval_strategy", "no",
            "--lora_dropout", "0", "--max_length", "64", *extra]


def first_loss(out) -> float:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return next(json.loads(line)["loss"] for line in (run_dir / "logging.jsonl").read_text().splitlines()
                if "loss" in json.loads(line))


def test_sft_with_longlora_trains_a_plain_lora_under_shifted_sparse_attention(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    assert main(sft(tiny_model_dir, tmp_path / "lora")) == 0
    seen = []  # (training, row length) of every attention call

    def spy(module, query, *args, **kwargs):
        seen.append((module.training, query.shape[2]))
        return s2_attention(module, query, *args, **kwargs)

    monkeypatch.setattr(shifted_sparse_attention, "s2_attention", spy)
    assert main(sft(tiny_model_dir, tmp_path / "longlora", "--tuner_type", "longlora")) == 0
    assert {length for training, length in seen if training} == {64}  # every training row padded to --max_length
    # B = 0 at the start: the two first losses differ only by the attention (and padding, which changes nothing).
    assert abs(first_loss(tmp_path / "longlora") - first_loss(tmp_path / "lora")) > 1e-4
    (run_dir,) = [p for p in (tmp_path / "longlora").iterdir() if p.is_dir()]
    config = json.loads((run_dir / "checkpoint-1" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", 8)


@pytest.mark.parametrize("argv, message", [
    (["--max_length", "62"], "does not split into groups of 15"),
    (["--sequence_parallel_size", "2"], "--sequence_parallel_size with --tuner_type longlora"),
])
def test_what_longlora_cannot_do_stops_with_a_reason(tiny_model_dir, tmp_path, capsys, argv, message):
    assert main([*sft(tiny_model_dir, tmp_path / "out", "--tuner_type", "longlora"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_longlora_on_another_architecture_or_online_method_stops(tmp_path, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    assert main(sft(str(tmp_path / "qwen"), tmp_path / "out", "--tuner_type", "longlora")) == 2
    assert "built for Llama models (as in ms-swift); this model is qwen2" in capsys.readouterr().err
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", str(tmp_path / "qwen"), "--dataset", "arith-prompts#4",
                 "--tuner_type", "longlora", "--output_dir", str(tmp_path / "g")]) == 2
    assert "--tuner_type longlora with grpo" in capsys.readouterr().err


def test_longlora_rows_run_padded_never_packed():
    from alignkit.config.run import RunArguments
    from alignkit.training.speedups import choose_layout

    args = RunArguments(train_type="longlora", padding_free=True, packing=True, max_length=64)
    layout, reasons = choose_layout(args, "sft", build_tiny_model(build_tiny_tokenizer()))
    assert not layout.padding_free and "shifted sparse attention" in reasons["padding-free packing"]
