"""SFT's loss options from ms-swift: --enable_dft_loss (Dynamic Fine-Tuning) and ms-swift 3.x's
--loss_type loss_scale, checked against hand computations on a tiny random model."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model, build_tiny_tokenizer
from test_run_strategies import train_records
from test_train_cli import run_dir_of

from alignkit.algorithms.sft import SFT
from alignkit.cli import main
from alignkit.config.checks import check_run_arguments
from alignkit.config.run import RunArguments
from alignkit.data.collate import SequenceCollator
from alignkit.data.template import Encoded
from alignkit.errors import AlignkitError
from alignkit.losses.sft import dft_token_logps
from alignkit.models.packing import Layout


def test_dft_weights_each_log_prob_by_its_probability_held_constant():
    logps = torch.log(torch.tensor([0.5, 0.25])).requires_grad_()
    weighted = dft_token_logps(logps)
    # 0.5 * ln 0.5 and 0.25 * ln 0.25, worked by hand.
    assert torch.allclose(weighted, torch.tensor([-0.34657359, -0.34657359]))
    weighted.sum().backward()
    assert torch.allclose(logps.grad, torch.tensor([0.5, 0.25]))  # no gradient through the weight p


def tiny_batch():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, init_std=0.5)  # a peaked model: token probabilities far from uniform
    rows = [Encoded([5, 9, 14, 3, 7, 21], [-100, -100, 14, 3, 7, 21]),
            Encoded([8, 2, 30, 11], [-100, 2, 30, -100])]
    return model, SequenceCollator(tokenizer.pad_token_id)(list(enumerate(rows)))


def swift_dft_loss(model, batch) -> torch.Tensor:
    """ms-swift's arithmetic, written out: swift/trainers/utils.py per_token_loss_func(enable_dft_loss=True)
    (labels rolled left, CE with reduction none, ``loss *= exp(-loss).detach()``), summed and divided by the
    number of trained tokens (Seq2SeqTrainer.compute_loss)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    labels = torch.roll(batch.labels, shifts=-1, dims=-1)
    labels[:, -1] = -100  # roll wraps the first label (always -100 here) round to the end
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100, reduction="none")
    loss = loss * torch.exp(-loss).detach()
    return loss.sum() / (batch.labels != -100).sum()


@pytest.mark.parametrize("layout", [Layout(), Layout(padding_free=True)], ids=["padded", "packed"])
def test_sft_dft_loss_and_gradients_equal_ms_swifts_formula(layout):
    model, batch = tiny_batch()
    expected = swift_dft_loss(model, batch)
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, metrics = SFT(layout=layout, enable_dft_loss=True).loss(model, batch)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6) and metrics["loss"] == pytest.approx(expected.item(), abs=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    plain, _ = SFT(layout=layout).loss(model, batch)
    assert loss < plain  # DFT's weights are probabilities (< 1): a different, smaller objective


def test_dft_reaches_the_training_step_from_the_command_line(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    row = {"messages": [{"role": "user", "content": "12 + 30?"}, {"role": "assistant", "content": "Answer: 42"}]}
    data.write_text((json.dumps(row) + "\n") * 2)

    def first_loss(*extra: str) -> float:
        out = tmp_path / f"out{len(extra)}"
        assert main(["sft", "--model", tiny_model_dir, "--dataset", str(data), "--output_dir", str(out),
                     "--max_steps", "1", "--logging_steps", "1", "--batch_size", "2", "--report_to", "none",
                     "--split_dataset_ratio", "0", "--dtype", "fp32", *extra]) == 0
        return train_records(run_dir_of(out))[0]["loss"]

    ce, dft = first_loss(), first_loss("--enable_dft_loss", "true")
    # The tiny model is near uniform over its vocabulary: every token's CE is close to ce, so DFT's mean of
    # CE x p is close to ce x exp(-ce).
    assert dft == pytest.approx(ce * math.exp(-ce), rel=0.05)


def test_dft_is_refused_for_tasks_that_generate_no_tokens(tiny_model_dir):
    from alignkit.training.run import build_algorithm

    args = RunArguments(enable_dft_loss=True, task_type="seq_cls", num_labels=2)
    with pytest.raises(AlignkitError, match="--enable_dft_loss .* --task_type seq_cls generates no tokens"):
        build_algorithm(args, "sft", {"task_type": "seq_cls", "num_labels": 2, "problem_type": None})
    assert build_algorithm(RunArguments(enable_dft_loss=True), "sft", {"task_type": "causal_lm"}).enable_dft_loss


def test_loss_type_loss_scale_is_sft_cross_entropy_and_says_so(caplog):
    # ms-swift 3.x (swift/plugin/loss.py loss_scale_func): sum(CE x loss_scale) / trained tokens; alignkit's
    # --loss_scale values weigh a token 1 or leave it out (-100), which is the plain cross-entropy.
    with caplog.at_level(logging.INFO, logger="alignkit"):
        check_run_arguments(RunArguments(loss_type=["loss_scale"], loss_scale="all"), "sft")
    assert ("--loss_type loss_scale: cross-entropy weighted per token by --loss_scale all (1 on trained tokens, 0 "
            "elsewhere), which is sft's cross_entropy") in caplog.text
    model, batch = tiny_batch()
    logits = model(input_ids=batch.input_ids).logits
    mask = batch.labels[:, 1:] != -100
    scale = mask.float()  # ms-swift's loss_scale under a binary --loss_scale
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
                         reduction="none", ignore_index=-100)
    swift = (ce * scale.view(-1)).sum() / mask.sum()
    assert torch.allclose(SFT().loss(model, batch)[0], swift, atol=1e-6)
