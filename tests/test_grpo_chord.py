"""CHORD (ms-swift's --chord_sft_dataset): (1 − μ)·GRPO + μ·SFT on expert rows, μ on ms-swift's schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.algorithms.chord import ChordSchedule, sft_batches, sft_loss
from alignkit.cli import main
from alignkit.data.template import Encoded


def test_mu_warms_up_linearly_then_decays_on_a_cosine():
    schedule = ChordSchedule(warmup_steps=4, decay_steps=10, peak=0.9, valley=0.1)
    assert schedule.mu(0) == 0.0 and schedule.mu(2) == pytest.approx(0.45)
    assert schedule.mu(4) == pytest.approx(0.9)  # the decay's start: its peak
    assert schedule.mu(9) == pytest.approx(0.8 * 0.5 * (1 + math.cos(math.pi * 0.5)) + 0.1)
    assert schedule.mu(14) == schedule.mu(100) == 0.1
    assert ChordSchedule(0, 5, 0.5, 0.0).mu(0) == pytest.approx(0.5)


def test_sft_loss_is_the_models_own_token_cross_entropy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [Encoded([5, 6, 7, 8], [-100, -100, 7, 8]), Encoded([9, 10, 11], [-100, 10, 11])]
    batch = next(sft_batches(rows, 2, 0, seed=1))
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(sft_loss(model, batch, phi=False), expected)
    # φ = p(1 − p) per token, p = e^{−ce}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    weights = torch.exp(-ce) * (1 - torch.exp(-ce)) * (labels != -100)
    torch.testing.assert_close(sft_loss(model, batch, phi=True), (ce * weights).sum() / (labels != -100).sum())


def test_batches_cycle_through_every_row(tiny_model_dir):
    rows = [Encoded([i, i + 1], [-100, i + 1]) for i in range(5)]
    batches = sft_batches(rows, 2, 0, seed=3)
    seen = [tuple(b["input_ids"][:, 0].tolist()) for b in (next(batches) for _ in range(4))]
    assert all(len(s) == 2 for s in seen)  # the pass's short tail is skipped: full batches only
    assert set(sum(seen[:2], ())) | set(sum(seen[2:], ())) <= set(range(5))


def test_grpo_mixes_the_expert_loss_into_its_own(tiny_model_dir, tmp_path):
    code = main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#8",
                 "--reward_funcs", "arith_format", "--num_generations", "2", "--max_completion_length", "4",
                 "--batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
                 "--dtype", "fp32", "--split_dataset_ratio", "0", "--eval_strategy", "no",
                 "--chord_sft_dataset", "arith-sft#4", "--chord_mu_warmup_steps", "0", "--chord_mu_decay_steps", "4",
                 "--chord_mu_peak", "0.9", "--chord_mu_valley", "0.1", "--output_dir", str(tmp_path)])
    assert code == 0
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    logged = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    assert [r["chord/mu"] for r in logged] == pytest.approx([0.9, ChordSchedule(0, 4, 0.9, 0.1).mu(1)])
    for r in logged:  # the logged loss is the mix of the two
        mu = r["chord/mu"]
        assert r["loss"] == pytest.approx((1 - mu) * r["chord/rl_loss"] + mu * r["chord/sft_loss"], rel=1e-4)
        assert r["chord/sft_loss"] > 0


def test_chord_needs_its_schedule(tiny_model_dir, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#8",
                 "--reward_funcs", "arith_format", "--chord_sft_dataset", "arith-sft#4", "--max_steps", "1"]) == 2
    assert "--chord_sft_dataset needs mu's schedule" in capsys.readouterr().err
