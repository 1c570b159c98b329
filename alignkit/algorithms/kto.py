"""Kahneman–Tversky Optimization (https://arxiv.org/abs/2402.01306) wired to the loop.

Rows are unpaired: a prompt, one completion and a desirable/undesirable label. The reference point z is one
number per optimizer step, estimated from mismatched pairs across the whole step (every micro-batch, every
process: ``kl_micro_batches``): row j's prompt with row j−1's completion, z = max(0, mean(log π(y'|x) −
log π_ref(y'|x))), detached. The loop computes it before the step's losses (``alignkit.training.loop``), so a
step of 4 rows gives the same z, loss and gradient as 1 micro-batch of 4, 4 of 1 or 2 processes × 2. The objective
is ``alignkit.losses.preference.kto_loss``; loss = mean over rows of λ_y·(1 − σ(β(±(r − z)))).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.data.collate import UnpairedBatch, kl_rows
from alignkit.errors import AlignkitError
from alignkit.losses.preference import kto_loss, kto_reference_point
from alignkit.models.packing import Layout
from alignkit.models.reference import Reference

logger = logging.getLogger("alignkit")

# Eq. 8 of the KTO paper: λ_D·n_D / (λ_U·n_U) should lie in [1, 4/3].
DESIRABLE_RATIO_RANGE = (1.0, 4 / 3)


@dataclass
class KTO:
    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    loss_type: str = "kto"  # kto | apo_zero_unpaired (no KL term)
    reference: Reference = field(default_factory=Reference)
    layout: Layout = field(default_factory=Layout)  # padded, packed or prefix-shared forwards: same numbers
    reference_point: float | None = None  # z of the current optimizer step (``for_step``); None before it

    def __post_init__(self):
        zero = torch.zeros(1)  # raises on an unknown loss type before any loading
        kto_loss(zero, zero, torch.ones(1, dtype=torch.bool), zero[0], beta=self.beta, loss_type=self.loss_type)

    @property
    def needs_kl(self) -> bool:
        return self.loss_type == "kto"

    rows: ClassVar[str] = "unpaired"
    loss_unit: ClassVar[str] = "examples"
    scalar_head: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = True

    @torch.no_grad()
    def kl_terms(self, model, batch: UnpairedBatch) -> torch.Tensor:
        """log π(y'|x) − log π_ref(y'|x) of each mismatched row of ``batch`` (B,): the terms z averages.
        No graph: z is detached, so its forward needs none."""
        logps, _ = self.layout.logps(model, batch.completions)  # (B,)
        ref_logps, _ = self.reference.logps(model, batch.completions)  # (B,)
        return (logps - ref_logps).float()

    def for_step(self, kl_sum: float, count: float) -> KTO:
        """This algorithm with the step's z, from the sum of ``kl_terms`` over the step's ``count`` pairs."""
        return dataclasses.replace(self, reference_point=kto_reference_point(torch.tensor(kl_sum), count).item())

    def loss(self, model, batch: UnpairedBatch) -> tuple[torch.Tensor, dict]:
        logps, _ = self.layout.logps(model, batch.completions)  # (B,)
        ref_logps, _ = self.reference.logps(model, batch.completions)  # (B,)
        kl = torch.zeros((), device=logps.device)
        if self.needs_kl:
            if self.reference_point is None:
                raise ValueError("KTO's reference point z is a statistic of the whole optimizer step: give it with "
                                 "for_step() (the loop does) before the step's losses")
            kl = torch.tensor(self.reference_point, device=logps.device)
        out = kto_loss(
            logps, ref_logps, batch.desirable, kl, beta=self.beta, desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight, loss_type=self.loss_type,
        )
        loss = out.losses.mean()
        return loss, kto_metrics(loss, kl, out.rewards, logps, batch.desirable)


def kl_micro_batches(group: list[list[int]], rows: list, *, rank: int, batch_size: int) -> list[tuple[list, bool]]:
    """The mismatched rows of one optimizer step as this process runs them, one (items, counted) per micro-batch.

    ``group`` holds the step's global micro-batches (row indices into ``rows``, all processes' rows). The pairs
    are ``kl_rows`` over all the step's rows in step order, so row j's prompt meets row j−1's completion
    whichever micro-batch or process either sits in; each process then takes the pairs of its own shard of each
    micro-batch, as the loop takes its rows. A process without rows in a micro-batch runs the batch's first pair
    uncounted, as the loop runs a weight-0 batch: every process must run every forward."""
    order = [i for global_batch in group for i in global_batch]
    mismatched = dict(zip(order, kl_rows([rows[i] for i in order])))
    out = []
    for global_batch in group:
        shard = global_batch[rank * batch_size : (rank + 1) * batch_size]
        out.append(([mismatched[i] for i in (shard or global_batch[:1])], bool(shard)))
    return out


def kto_metrics(loss, kl, rewards, logps, desirable) -> dict:
    """TRL's KTO names. The chosen/rejected ones are means over the micro-batch's desirable (undesirable) rows,
    given as (mean, count) so the loop weighs them by their rows (count 0 when there are none); the loop adds
    rewards/margins from the step's two means."""
    metrics: dict = {"loss": loss.item(), "kl": kl.item()}
    for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
        count = int(rows.sum())
        metrics[f"rewards/{name}"] = (rewards[rows].mean().item() if count else 0.0, count)
        metrics[f"logps/{name}"] = (logps[rows].detach().mean().item() if count else 0.0, count)
    return metrics


def check_kto_data(labels: list[bool], *, desirable_weight: float, undesirable_weight: float) -> None:
    """Warn when λ_D·n_D / (λ_U·n_U) is outside [1, 4/3] (Eq. 8 of the paper), naming weights that fit."""
    n_desirable = sum(labels)
    n_undesirable = len(labels) - n_desirable
    if not n_desirable or not n_undesirable:
        logger.warning("KTO: the training rows are all %s; the loss only pushes one way",
                       "desirable" if n_desirable else "undesirable")
        return
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    low, high = DESIRABLE_RATIO_RANGE
    if not low <= ratio <= high:
        base = undesirable_weight * n_undesirable / n_desirable
        logger.warning(
            "KTO: desirable_weight·n_desirable / (undesirable_weight·n_undesirable) = %.1f·%d / (%.1f·%d) = %.3f is "
            "outside [1, 4/3] (Eq. 8 of the KTO paper); with these counts --desirable_weight in [%.3f, %.3f] fits",
            desirable_weight, n_desirable, undesirable_weight, n_undesirable, ratio, low * base, high * base,
        )


def check_kto_steps(rows: list, rows_per_step: int, split: str) -> list:
    """KL needs ≥ 2 rows per optimizer step (a lone row's mismatched pair is its own completion, so z would be
    its own implied reward): drop one row when an epoch's last step would hold a single row, and refuse a
    single row. ``rows_per_step``: per-device batch × accumulation × processes (for held-out rows, all of
    them form one step). Returns the rows to use."""
    if len(rows) == 1:
        raise AlignkitError(f"--rlhf_type kto needs at least 2 {split} rows to estimate its KL term, got 1 (or use "
                            "--loss_type apo_zero_unpaired, which has no KL term)")
    if rows_per_step > 1 and len(rows) % rows_per_step == 1:
        logger.warning("KTO: dropping 1 of %d %s rows so that no optimizer step of %d rows holds a single row",
                       len(rows), split, rows_per_step)
        return rows[:-1]
    return rows


def check_kto_rows(algorithm: KTO, train_rows: list, val_rows: list, rows_per_step: int) -> tuple[list, list]:
    """Before the model loads: the label balance warning and, with a KL term, the rows per optimizer step
    (training) and the held-out set (one KL estimate over all its rows)."""
    check_kto_data([row.desirable for _, row in train_rows], desirable_weight=algorithm.desirable_weight,
                   undesirable_weight=algorithm.undesirable_weight)
    if algorithm.needs_kl:
        if rows_per_step < 2:
            raise AlignkitError(
                "--rlhf_type kto estimates its KL term from mismatched prompt/completion pairs across an optimizer "
                "step, which needs at least 2 rows: raise --per_device_train_batch_size or "
                "--gradient_accumulation_steps (got 1 × 1), or use --loss_type apo_zero_unpaired, which has no KL term"
            )
        train_rows = check_kto_steps(train_rows, rows_per_step, "training")
        if val_rows:
            val_rows = check_kto_steps(val_rows, len(val_rows), "held-out")
    return train_rows, val_rows
