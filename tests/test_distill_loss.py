"""GKD's generalised JSD (alignkit.losses.distill) at β = 0, 0.5, 1 against hand values and TRL's GKDTrainer."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses.distill import generalized_jsd

# One token over a vocabulary of two: student p_S = (0.5, 0.5), teacher p_T = (0.8, 0.2).
STUDENT = torch.log(torch.tensor([[[0.5, 0.5]]]))
TEACHER = torch.log(torch.tensor([[[0.8, 0.2]]]))
ONE = torch.ones(1, 1)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


@pytest.mark.parametrize("beta, expected", [
    (0.0, kl((0.8, 0.2), (0.5, 0.5))),  # forward KL(p_T ‖ p_S) = 0.1927
    (1.0, kl((0.5, 0.5), (0.8, 0.2))),  # reverse KL(p_S ‖ p_T) = 0.2231
    (0.5, 0.5 * kl((0.8, 0.2), (0.65, 0.35)) + 0.5 * kl((0.5, 0.5), (0.65, 0.35))),  # JSD with M = (0.65, 0.35)
])
def test_generalized_jsd_by_hand(beta, expected):
    loss, per_token = generalized_jsd(STUDENT, TEACHER, ONE, beta=beta)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert per_token.shape == (1, 1)


def test_the_mixture_weights_beta_on_the_teacher():
    # β = 0.9: M = 0.9·p_T + 0.1·p_S = (0.77, 0.23).
    loss, _ = generalized_jsd(STUDENT, TEACHER, ONE, beta=0.9)
    expected = 0.9 * kl((0.8, 0.2), (0.77, 0.23)) + 0.1 * kl((0.5, 0.5), (0.77, 0.23))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_matches_trl_gkd_with_a_mask_and_temperature(beta):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    labels = torch.tensor([[5, 1, -100], [2, -100, -100]])
    trl_value = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=0.7)
    ours, per_token = generalized_jsd(student, teacher, labels != -100, beta=beta, temperature=0.7)
    assert ours.item() == pytest.approx(trl_value.item(), rel=1e-5)
    assert per_token[0, 2].item() == 0.0  # masked positions carry nothing
