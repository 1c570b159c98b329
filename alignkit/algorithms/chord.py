"""CHORD (ms-swift's ``--chord_sft_dataset``, arXiv 2508.11408): expert SFT rows mixed into GRPO's loss,

    L = (1 − μ) · L_GRPO + μ · L_SFT,

μ on a schedule over the optimizer steps (a linear warm-up to ``peak``, then a cosine decay to ``valley``), one
batch of SFT rows per micro-batch, its token cross-entropy optionally weighed by φ = p·(1 − p) of each token (the
phi function: tokens the policy is already sure or unsure of count less)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from alignkit.data.collate import pad
from alignkit.data.template import IGNORE_INDEX, Encoded


@dataclass(frozen=True)
class ChordSchedule:
    warmup_steps: int  # --chord_mu_warmup_steps
    decay_steps: int  # --chord_mu_decay_steps
    peak: float  # --chord_mu_peak
    valley: float  # --chord_mu_valley
    phi: bool = False  # --chord_enable_phi_function

    def mu(self, step: int) -> float:
        """μ at optimizer step ``step`` (ms-swift's mu_schedule_function)."""
        if step < self.warmup_steps:
            return step / self.warmup_steps * self.peak
        if step >= self.warmup_steps + self.decay_steps:
            return self.valley
        progress = (step - self.warmup_steps) / self.decay_steps
        return (self.peak - self.valley) * 0.5 * (1 + math.cos(math.pi * progress)) + self.valley


def sft_batches(rows: list[Encoded], batch_size: int, pad_id: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of ``batch_size`` rows, drawn in a fresh random order each pass, endlessly (ms-swift's cyclic
    random sampler)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if len(chunk) < batch_size and len(order) >= batch_size:
                continue  # a pass's short tail: every batch holds batch_size rows
            input_ids, attention_mask, labels = pad([rows[i] for i in chunk], pad_id)
            yield {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_loss(model, batch: dict[str, torch.Tensor], *, phi: bool) -> torch.Tensor:
    """The mean token cross-entropy of ``batch``'s trained tokens (labels ≠ −100), each weighed by p·(1 − p) with
    ``phi`` (p the model's probability of the token, without gradient)."""
    device = next(model.parameters()).device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)[:, 1:]  # (N, T−1) the token each position predicts
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()  # (N, T−1, V)
    trained = labels != IGNORE_INDEX
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    if phi:
        probability = torch.exp(-losses.detach())
        losses = losses * probability * (1 - probability)
    return (losses * trained).sum() / trained.sum().clamp(min=1)
