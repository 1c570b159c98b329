"""On-policy distillation's objective (GKD: Agarwal et al. 2024, https://arxiv.org/abs/2306.13649), torch only.

The generalised Jensen-Shannon divergence between the teacher's and the student's next-token distributions at
every completion token, Eq. (1) of the GKD paper, with ms-swift's and TRL's meaning of β (``--beta`` of
``--rlhf_type gkd``; swift/rlhf_trainers/gkd_loss.py, trl GKDTrainer.generalized_jsd_loss):

    β = 0:      KL(p_T ‖ p_S)                                    (forward KL)
    β = 1:      KL(p_S ‖ p_T)                                    (reverse KL)
    0 < β < 1:  β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M),  M = β·p_T + (1 − β)·p_S

(β = 0.5 is the symmetric JSD.) Both distributions are softmax(logits / temperature).
"""

from __future__ import annotations

import math

import torch


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *, beta: float,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """student_logits, teacher_logits (N, T, V); mask (N, T), 1 on the tokens distilled (a completion's) →
    (the mean over those tokens, per-token divergences (N, T), 0 elsewhere)."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, T, V)
    teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)

    def kl(target: torch.Tensor, other: torch.Tensor) -> torch.Tensor:  # KL(target ‖ other) per position
        return (target.exp() * (target - other)).sum(-1)

    if beta == 0:
        per_token = kl(teacher, student)
    elif beta == 1:
        per_token = kl(student, teacher)
    else:
        mixture = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log1p(-beta)]), dim=0)
        per_token = beta * kl(teacher, mixture) + (1 - beta) * kl(student, mixture)
    mask = mask.to(per_token.dtype)
    per_token = per_token * mask
    return per_token.sum() / mask.sum().clamp(min=1), per_token
