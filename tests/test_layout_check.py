"""The speed-ups check themselves (--check_speedups): the first packed batch also runs padded; a correct layout
costs that one forward and says so, a broken one makes the run fall back to padded batches and say by how much."""

import json
import logging

import pytest
import torch
from test_packing import pair_items

from alignkit.algorithms.rollout import completion_logprobs
from alignkit.cli import main
from alignkit.data.collate import PairCollator
from alignkit.models import packing
from alignkit.models.layout_check import LayoutCheck, logps_tolerance
from alignkit.models.load import add_lora
from alignkit.models.logprobs import forward_logps
from alignkit.models.packing import Layout


def see_everything_before(model, packed):
    """A broken packed mask: plain causal attention over the whole row, so a rejected answer sees its pair's
    chosen answer and a packed sequence the ones before it."""
    length = packed.input_ids.shape[1]
    return torch.ones(length, length, dtype=torch.bool).tril().expand(packed.input_ids.shape[0], 1, -1, -1)


def counted_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def test_a_correct_layout_costs_one_extra_forward_and_says_so(model, caplog):
    """A no-grad pass (DPO's reference pass) adds the padded forward; a training step compares in eval mode
    (no dropout, no random numbers drawn) and then runs its own forward."""
    batch = PairCollator(0)(pair_items())
    calls = counted_forwards(model)
    layout = Layout(padding_free=True, prefix_sharing=True, check=LayoutCheck("prompt-prefix sharing"))
    model.eval()
    with caplog.at_level(logging.INFO, logger="alignkit"), torch.no_grad():
        first, _ = layout.logps(model, batch)
    assert len(calls) == 2 and layout.check.state == "passed"
    assert layout.check.difference < 1e-5
    assert "Speed-up check (prompt-prefix sharing) on LlamaForCausalLM, sdpa attention, float32" in caplog.text
    assert "within" in caplog.text
    second, _ = layout.logps(model, batch)  # checked once per run
    assert len(calls) == 3
    torch.testing.assert_close(first, second)

    # LoRA with dropout: in train mode the two layouts would draw different dropout masks.
    model = add_lora(model, rank=4, alpha=8, dropout=0.3, target_modules=["all-linear"]).train()
    training = Layout(padding_free=True, prefix_sharing=True, check=LayoutCheck())
    state = torch.random.get_rng_state()
    with torch.random.fork_rng():
        logps, _ = training.logps(model, batch)
        assert len(calls) == 6 and logps.requires_grad and training.check.state == "passed"
        assert training.check.difference < 1e-5
        assert model.training and all(m.training for m in model.modules())
        after_step = torch.random.get_rng_state()
    torch.random.set_rng_state(state)
    packed, _ = Layout(padding_free=True, prefix_sharing=True).logps(model, batch)  # the step alone
    assert torch.equal(torch.random.get_rng_state(), after_step)  # the check drew no random numbers
    torch.testing.assert_close(packed, logps)


def test_a_broken_layout_falls_back_to_padded_batches_and_says_by_how_much(model, caplog, monkeypatch):
    monkeypatch.setattr(packing, "packed_attention_mask", see_everything_before)
    batch = PairCollator(0)(pair_items())
    layout = Layout(padding_free=True, prefix_sharing=True, check=LayoutCheck())
    with caplog.at_level(logging.INFO, logger="alignkit"):
        logps, counts = layout.logps(model, batch)
    padded, padded_counts = forward_logps(model, batch)
    assert layout.check.state == "failed" and layout.check.difference > 10 * logps_tolerance(torch.float32)
    torch.testing.assert_close(logps, padded)  # what the run trains on is the padded path's
    assert logps.requires_grad  # and with its graph: the fallback forward runs with gradients
    assert f"differ from the padded path's by {layout.check.difference:.3g} per token" in caplog.text
    assert "on LlamaForCausalLM, sdpa attention, float32" in caplog.text and "uses padded batches" in caplog.text
    calls = counted_forwards(model)
    layout.logps(model, batch)
    assert len(calls) == 1  # from now on padded only


def test_the_tolerance_follows_the_compute_dtype(model):
    batch = PairCollator(0)(pair_items())
    layout = Layout(padding_free=True, prefix_sharing=True, check=LayoutCheck())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layout.logps(model, batch)
    assert layout.check.state == "passed"
    assert logps_tolerance(torch.bfloat16) > logps_tolerance(torch.float16) > logps_tolerance(torch.float32)


def test_online_completion_logprobs_fall_back_too(model, monkeypatch):
    monkeypatch.setattr(packing, "packed_attention_mask", see_everything_before)
    from alignkit.algorithms import rollout

    monkeypatch.setattr(rollout, "packed_attention_mask", see_everything_before)
    torch.manual_seed(0)
    prompt = torch.randint(3, 300, (2, 6))
    ones = torch.ones(4, 6, dtype=torch.long)
    experience = {"prompt_ids": prompt.repeat_interleave(2, 0), "prompt_mask": ones,
                  "completion_ids": torch.randint(3, 300, (4, 3)), "completion_mask": ones[:, :3]}
    layout = Layout(padding_free=True, prefix_sharing=True, check=LayoutCheck())
    logps, _ = completion_logprobs(model, experience, temperature=1.0, layout=layout)
    padded, _ = completion_logprobs(model, experience, temperature=1.0)
    assert layout.check.state == "failed"
    torch.testing.assert_close(logps, padded)


def run_dpo(tiny_model_dir, out, *extra) -> list[dict]:
    assert main(["rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", "arith-pref#6",
                 "--max_steps", "2", "--batch_size", "3", "--logging_steps", "1", "--learning_rate", "1e-2",
                 "--lora_dropout", "0", "--output_dir", str(out), "--dtype", "fp32", "--report_to", "none",
                 *extra]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_a_run_whose_packing_is_broken_trains_as_the_padded_run(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    padded = run_dpo(tiny_model_dir, tmp_path / "padded", "--padding_free", "false")
    monkeypatch.setattr(packing, "packed_attention_mask", see_everything_before)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        broken = run_dpo(tiny_model_dir, tmp_path / "broken")
    assert "Speed-up check (padding-free packing + prompt-prefix sharing) on LlamaForCausalLM" in caplog.text
    assert "uses padded batches" in caplog.text
    assert broken == pytest.approx(padded, abs=1e-6)


def test_check_speedups_false_skips_the_extra_forward(tiny_model_dir, tmp_path, monkeypatch, caplog):
    from transformers import LlamaForCausalLM

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    calls = []
    forward = LlamaForCausalLM.forward
    monkeypatch.setattr(LlamaForCausalLM, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    with caplog.at_level(logging.INFO, logger="alignkit"):
        checked = run_dpo(tiny_model_dir, tmp_path / "checked")
    assert "Speed-up check (padding-free packing + prompt-prefix sharing)" in caplog.text
    with_check, calls[:] = len(calls), []
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache2"))  # the reference pass runs again
    unchecked = run_dpo(tiny_model_dir, tmp_path / "unchecked", "--check_speedups", "false")
    assert with_check == len(calls) + 1
    assert checked == pytest.approx(unchecked, abs=1e-6)
