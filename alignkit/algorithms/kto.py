"""Kahneman–Tversky Optimization (https://arxiv.org/abs/2402.01306) wired to the loop.

Rows are unpaired: a prompt, one completion and a desirable/undesirable label. The reference point z is
estimated from mismatched pairs within the micro-batch (prompt i with completion i−1, built by
``UnpairedCollator``): z = max(0, mean(log π(y'|x) − log π_ref(y'|x))), detached. The objective is
``alignkit.losses.preference.kto_loss``; loss = mean over rows of λ_y·(1 − σ(β(±(r − z)))).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from alignkit.data.collate import UnpairedBatch
from alignkit.errors import AlignkitError
from alignkit.losses.preference import kto_kl_estimate, kto_loss
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

    def loss(self, model, batch: UnpairedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logps, _ = self.layout.logps(model, batch.completions)  # (B,)
        ref_logps, _ = self.reference.logps(model, batch.completions)  # (B,)
        kl = torch.zeros((), device=logps.device)
        if self.needs_kl:
            with torch.no_grad():  # z is detached anyway: no graph for the mismatched forward
                kl_logps, _ = self.layout.logps(model, batch.kl)  # (B,)
            ref_kl_logps, _ = self.reference.logps(model, batch.kl)  # (B,)
            kl = kto_kl_estimate(kl_logps, ref_kl_logps)
        out = kto_loss(
            logps, ref_logps, batch.desirable, kl, beta=self.beta, desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight, loss_type=self.loss_type,
        )
        loss = out.losses.mean()
        return loss, kto_metrics(loss, kl, out.rewards, logps, batch.desirable)


def kto_metrics(loss, kl, rewards, logps, desirable) -> dict[str, float]:
    """TRL's KTO names; a micro-batch without desirable (or undesirable) rows leaves those keys out."""
    metrics = {"loss": loss.item(), "kl": kl.item()}
    for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"rewards/{name}"] = rewards[rows].mean().item()
            metrics[f"logps/{name}"] = logps[rows].detach().mean().item()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
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


def check_kto_batches(rows: list, batch_size: int, split: str, flag: str) -> list:
    """KL needs ≥ 2 rows per micro-batch: refuse a batch size of 1, and drop one row when the last
    micro-batch of an epoch would hold a single row. Returns the rows to use."""
    if batch_size < 2:
        raise AlignkitError(
            f"--rlhf_type kto estimates its KL term from mismatched prompt/completion pairs within a micro-batch, "
            f"so {flag} must be at least 2 (got {batch_size}); or use --loss_type apo_zero_unpaired, which has no "
            "KL term."
        )
    if len(rows) == 1:
        raise AlignkitError(f"--rlhf_type kto needs at least 2 {split} rows to estimate its KL term, got 1")
    if len(rows) % batch_size == 1:
        logger.warning("KTO: dropping 1 of %d %s rows so that no micro-batch of %d holds a single row",
                       len(rows), split, batch_size)
        return rows[:-1]
    return rows


def check_kto_rows(algorithm: KTO, train_rows: list, val_rows: list, batch_size: int,
                   eval_batch_size: int) -> tuple[list, list]:
    """Before the model loads: the label balance warning and, with a KL term, the micro-batch sizes."""
    check_kto_data([row.desirable for _, row in train_rows], desirable_weight=algorithm.desirable_weight,
                   undesirable_weight=algorithm.undesirable_weight)
    if algorithm.needs_kl:
        train_rows = check_kto_batches(train_rows, batch_size, "training", "--per_device_train_batch_size")
        if val_rows:
            val_rows = check_kto_batches(val_rows, eval_batch_size, "held-out", "--per_device_eval_batch_size")
    return train_rows, val_rows
