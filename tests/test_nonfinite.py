"""The loop itself: non-finite steps are skipped, counted and logged; NaN weights are never saved; every
epoch draws its own order. These call ``alignkit.training.loop.train`` directly with a wrapped algorithm."""

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from alignkit.algorithms.sft import SFT
from alignkit.data.builtin import BUILTIN_DATASETS
from alignkit.data.collate import SequenceCollator
from alignkit.data.order import epoch_batches
from alignkit.data.rows import RowSource
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.training.checkpoint import TrainerState, save_checkpoint
from alignkit.training.loop import train
from alignkit.training.runner import LoopConfig


class Poisoned:
    """SFT, but the loss is NaN for micro-batches holding ``bad_rows`` (or every one, with ``always``)."""

    rows, loss_unit = SFT.rows, SFT.loss_unit

    def __init__(self, bad_rows=(), always=False):
        self.inner, self.bad_rows, self.always = SFT(), set(bad_rows), always
        self.seen: list[list[int]] = []

    def loss(self, model, batch):
        self.seen.append(list(batch.row_ids))
        loss, metrics = self.inner.loss(model, batch)
        if self.always or self.bad_rows & set(batch.row_ids):
            loss = loss * float("nan")
        return loss, metrics


class InfiniteGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss whose gradient overflows)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class OverflowingGradient(Poisoned):
    def loss(self, model, batch):
        loss, metrics = self.inner.loss(model, batch)
        if self.bad_rows & set(batch.row_ids):
            loss = InfiniteGradient.apply(loss)
        return loss, metrics


@pytest.fixture
def setup(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    encoder = ChatEncoder(tokenizer, max_length=256)
    data = BUILTIN_DATASETS["arith-sft"]("train", data_seed=0)[:4]
    rows = [(i, encoder.encode_conversation(row)) for i, row in enumerate(data)]
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def run(algorithm, **config):
        torch.manual_seed(0)
        model = load_causal_lm(tiny_model_dir)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        settings = {"batch_size": 1, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 100,
                    **config}
        checkpoint = train(model=model, tokenizer=tokenizer, algorithm=algorithm, train_rows=rows, val_rows=[],
                           collate=SequenceCollator(tokenizer.pad_token_id), config=LoopConfig(**settings),
                           run_dir=run_dir, args_for_checkpoint={},
                           row_sources=[RowSource("arith.jsonl", i + 1) for i in range(len(rows))])
        return checkpoint, initial

    return run, run_dir


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


def adam_steps(checkpoint) -> set[int]:
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    return {int(s["step"]) for s in state.values()}


def test_a_nan_loss_step_is_skipped_counted_and_logged_with_its_rows(setup, caplog):
    run, run_dir = setup
    algorithm = Poisoned(bad_rows={2})
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        checkpoint, _ = run(algorithm)
    step = 1 + [ids for ids in algorithm.seen].index([2])  # batch size 1: one micro-batch per step
    assert (
        f"step {step}: non-finite loss (nan); update skipped (1 in a row, 1 in total). Rows: 2 (arith.jsonl row 3)"
        in caplog.text
    )

    logged = records(run_dir)
    (skip,) = [r for r in logged if "nonfinite" in r]
    assert skip == {"step": step, "nonfinite": "non-finite loss (nan)", "row_ids": [2], "nonfinite_steps": 1}
    assert [r["step"] for r in logged if "loss" in r] == [s for s in range(1, 5) if s != step]
    assert all(r["nonfinite_steps"] == 1 for r in logged if r["step"] > step)
    # Three of the four updates were applied: AdamW counted exactly three steps.
    assert adam_steps(checkpoint) == {3}
    assert json.loads((checkpoint / "trainer_state.json").read_text())["nonfinite_steps"] == 1
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())


def test_an_infinite_gradient_with_a_finite_loss_is_skipped_too(setup):
    run, run_dir = setup
    order = [i for batch in epoch_batches(4, 1, seed=42, epoch=0, shuffle=True) for i in batch]
    # Accumulating 2 micro-batches per step: the first step holds order[0:2], and only it overflows.
    checkpoint, _ = run(OverflowingGradient(bad_rows={order[0]}), gradient_accumulation_steps=2)
    (skip,) = [r for r in records(run_dir) if "nonfinite" in r]
    assert skip.pop("nonfinite") in ("non-finite gradient norm (inf)", "non-finite gradient norm (nan)")
    assert skip == {"step": 1, "row_ids": order[:2], "nonfinite_steps": 1}
    assert adam_steps(checkpoint) == {1}
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())


def test_only_nan_steps_leave_the_weights_untouched(setup):
    run, _ = setup
    checkpoint, initial = run(Poisoned(always=True), max_nonfinite_steps=100)
    saved = load_file(checkpoint / "model.safetensors")
    for key, value in saved.items():
        assert torch.equal(value, initial[key]), key
    assert json.loads((checkpoint / "trainer_state.json").read_text())["nonfinite_steps"] == 4


def test_too_many_nonfinite_steps_in_a_row_stop_the_run_with_a_message(setup):
    run, run_dir = setup
    with pytest.raises(AlignkitError, match=r"stopped at step 3: 3 optimizer steps in a row had a non-finite loss "
                                            r"or gradient \(--max_nonfinite_steps 3\)"):
        run(Poisoned(always=True), max_nonfinite_steps=3)
    assert not [p for p in run_dir.iterdir() if p.name.startswith("checkpoint")]


def test_nan_weights_are_never_saved(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.inf
    with pytest.raises(AlignkitError, match=r"not saving checkpoint-7: parameter model.layers.1.mlp.up_proj.weight "
                                            r"holds NaN or inf values"):
        save_checkpoint(tmp_path, TrainerState(global_step=7), model=model, tokenizer=None, optimizer=None,
                        scheduler=None, args={}, save_total_limit=None)
    assert list(tmp_path.iterdir()) == []


def test_every_epoch_draws_its_own_order_and_accumulation_walks_through_it(setup):
    run, _ = setup
    algorithm = Poisoned()
    run(algorithm, num_train_epochs=3, gradient_accumulation_steps=3)  # 4 rows: groups of 3 + 1 per epoch
    expected = [batch for epoch in range(3) for batch in epoch_batches(4, 1, seed=42, epoch=epoch, shuffle=True)]
    assert algorithm.seen == expected
    assert expected[:4] != expected[4:8]  # the orders really differ
