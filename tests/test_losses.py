"""alignkit.losses.preference: hand-computed values, step-0 identities, conventions, and parity with TRL 1.x.

The worked example used throughout (β = 0.1): policy log-probs π_w = −10, π_l = −12, reference
ref_w = −10.5, ref_l = −11, completion lengths 5 and 8. So h_w = 0.5, h_l = −1, Δ = 1.5, βΔ = 0.15:
  sigmoid  −log σ(0.15)                    = 0.620957
  hinge    relu(1 − 0.15)                  = 0.85
  ipo      (0.5/5 + 1/8 − 1/(2·0.1))²      = (0.225 − 5)² = 22.800625   (length-normalised, as TRL)
  sppo     (0.5 − 5)² + (−1 + 5)²          = 20.25 + 16 = 36.25
  bco_pair −log σ(0.05) − log σ(0.1)       = 1.312856
  sigmoid_norm −log σ(0.1 · 0.225)         = 0.681960
"""

import ast
import math
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignkit import losses as L

BETA = 0.1


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


PAIR = (t(-10.0), t(-12.0), t(-10.5), t(-11.0))
LENGTHS = {"chosen_lengths": t(5.0), "rejected_lengths": t(8.0)}

HAND_VALUES = {  # loss_type: (label_smoothing, expected), from the issue tracker (TRL 1.x semantics)
    "sigmoid": (0.0, 0.620957),
    "hinge": (0.0, 0.85),
    "ipo": (0.0, 22.800625),
    "exo_pair": (1e-3, 2.505517),
    "nca_pair": (0.0, 1.349888),
    "robust": (0.1, 0.602207),
    "bco_pair": (0.0, 1.312856),
    "sppo_hard": (0.0, 36.25),
    "apo_zero": (0.0, 0.962523),
    "apo_down": (0.0, 0.975068),
    "discopop": (0.0, 0.849338),
    "sigmoid_norm": (0.0, 0.681960),
}


def test_losses_package_imports_only_torch_and_stdlib():
    files = sorted(Path(L.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "preference.py", "rl.py"}
    for file in files:
        roots = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module.startswith("alignkit") and
                                                not node.module.startswith("alignkit.losses")), \
                    f"{file.name} imports {node.module}: the losses import nothing of alignkit but each other"
                roots.add(node.module.split(".")[0])
        assert roots - {"torch", "alignkit"} <= set(sys.stdlib_module_names), (file.name, roots)


# ---------------------------------------------------------------- hand values


@pytest.mark.parametrize("loss_type", sorted(HAND_VALUES))
def test_dpo_hand_values(loss_type):
    label_smoothing, expected = HAND_VALUES[loss_type]
    out = L.dpo_loss(*PAIR, beta=BETA, loss_type=loss_type, label_smoothing=label_smoothing, **LENGTHS)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.05)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)


def test_simpo_cpo_hand_values():
    # SimPO: −log σ(2·(−2.0 + 1.5) − 1) = −log σ(−2)
    assert L.simpo_loss(t(-2.0), t(-1.5), beta=2.0, gamma=1.0).losses.item() == pytest.approx(
        2.126928, abs=1e-6
    )
    # CPO: −log σ(0.1·(−10 + 12)) = −log σ(0.2), on the summed policy log-probs of the worked example
    assert L.cpo_loss(t(-10.0), t(-12.0), beta=BETA).losses.item() == pytest.approx(0.598139, abs=1e-6)


def test_kto_hand_values():
    kl = torch.tensor(0.2, dtype=torch.float64)
    # desirable: 1 − σ(0.1·(0.5 − 0.2)); undesirable: 1 − σ(0.1·(0.2 + 1.0))
    out = L.kto_loss(t(0.5, -1.0), t(0.0, 0.0), torch.tensor([True, False]), kl, beta=BETA)
    assert out.losses.tolist() == pytest.approx([0.492501, 0.470036], abs=1e-6)
    assert out.rewards.tolist() == pytest.approx([0.05, -0.1])
    weighted = L.kto_loss(
        t(0.5, -1.0),
        t(0.0, 0.0),
        torch.tensor([True, False]),
        kl,
        beta=BETA,
        desirable_weight=2.0,
        undesirable_weight=0.5,
    )
    assert weighted.losses.tolist() == pytest.approx([2 * 0.492501, 0.5 * 0.470036], abs=1e-6)


def test_reward_model_hand_values():
    assert L.reward_model_loss(t(1.2), t(0.3)).losses.item() == pytest.approx(0.341154, abs=1e-6)
    assert L.reward_model_loss(t(1.2), t(0.3), margin=0.5).losses.item() == pytest.approx(0.513015, abs=1e-6)
    centred = L.reward_model_loss(t(1.2), t(0.3), center_rewards_coefficient=0.01).losses.item()
    assert centred == pytest.approx(0.341154 + 0.01 * 1.5**2, abs=1e-6)
    assert L.reward_model_loss(t(1.2), t(0.3), loss_type="hinge").losses.item() == pytest.approx(0.1)


def test_orpo_matches_naive_odds():
    chosen, rejected = t(-0.5, -2.0), t(-1.5, -0.2)
    odds = lambda lp: torch.log(torch.exp(lp) / (1 - torch.exp(lp)))  # noqa: E731
    log_odds = odds(chosen) - odds(rejected)
    out = L.orpo_loss(chosen, rejected, beta=BETA)
    assert torch.allclose(out.losses, -BETA * F.logsigmoid(log_odds).float(), atol=1e-6)
    assert torch.allclose(out.log_odds_chosen, log_odds.float(), atol=1e-6)


def test_orpo_stable_near_zero_and_very_negative():
    chosen = torch.tensor([-1e-7, -300.0], requires_grad=True)
    rejected = torch.tensor([-300.0, -1e-7], requires_grad=True)
    out = L.orpo_loss(chosen, rejected, beta=BETA)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(chosen.grad).all()


# ---------------------------------------------------------------- step-0 identities


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        ("sigmoid", math.log(2)),
        ("hinge", 1.0),
        ("ipo", 1 / (4 * BETA**2)),
        ("sppo_hard", 1 / (2 * BETA**2)),
        ("nca_pair", 2 * math.log(2)),
        ("bco_pair", 2 * math.log(2)),
        ("apo_zero", 1.0),
        ("apo_down", 1.0),
        ("sigmoid_norm", math.log(2)),
        ("robust", math.log(2)),
        ("discopop", 0.5 * math.log(2) + 0.5),
    ],
)
def test_policy_equals_reference(loss_type, expected):
    logps = -torch.rand(2, 4, dtype=torch.float64) * 50
    lengths = torch.randint(1, 30, (2, 4))
    out = L.dpo_loss(
        logps[0],
        logps[1],
        logps[0].clone(),
        logps[1].clone(),
        beta=BETA,
        loss_type=loss_type,
        label_smoothing=0.1 if loss_type == "robust" else 0.0,
        chosen_lengths=lengths[0],
        rejected_lengths=lengths[1],
    )
    assert torch.allclose(out.losses, torch.full_like(out.losses, expected))


def test_kto_step0_is_half():
    logps = -torch.rand(6, dtype=torch.float64) * 50
    labels = torch.tensor([True, False] * 3)
    kl = L.kto_kl_estimate(logps.roll(1), logps.roll(1))
    assert kl.item() == 0.0
    assert torch.allclose(
        L.kto_loss(logps, logps, labels, kl, beta=BETA).losses, torch.full((6,), 0.5).double()
    )


# ---------------------------------------------------------------- conventions and options


def test_sigmoid_label_smoothing_convention():
    swift = L.dpo_loss(*PAIR, beta=BETA, label_smoothing=0.2).losses
    trl1 = L.dpo_loss(*PAIR, beta=BETA, label_smoothing=0.2, convention="trl1").losses
    cdpo = -0.8 * F.logsigmoid(t(0.15)) - 0.2 * F.logsigmoid(t(-0.15))
    assert torch.allclose(swift, cdpo)
    assert trl1.item() == pytest.approx(0.620957, abs=1e-6)


def test_exo_pair_epsilon_convention():
    default = L.dpo_loss(*PAIR, beta=BETA, loss_type="exo_pair").losses.item()
    assert default == pytest.approx(2.505517, abs=1e-6)
    with pytest.raises(ValueError, match="exo_pair needs label_smoothing > 0"):
        L.dpo_loss(*PAIR, beta=BETA, loss_type="exo_pair", convention="trl1")


def test_alpha_divergence_conventions():
    pc, pr, rc, rr = (-torch.rand(5, dtype=torch.float64) * 3 for _ in range(4))
    h_w, h_l = pc - rc, pr - rr

    def loss(**kwargs):
        return L.dpo_loss(pc, pr, rc, rr, beta=BETA, **kwargs).losses

    # TRL 0.x (ms-swift): logits = (exp(−α·h_l) − exp(−α·h_w)) / α
    alpha = 0.3
    trl0 = -F.logsigmoid(BETA * (torch.exp(-alpha * h_l) - torch.exp(-alpha * h_w)) / alpha)
    assert torch.allclose(loss(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=alpha), trl0)
    assert torch.allclose(
        loss(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1 - alpha, convention="trl1"), trl0
    )
    # Default coefficient 1.0: forward KL under swift, reverse KL under trl1.
    alpha_default = loss(f_divergence_type="alpha_divergence")
    assert torch.allclose(alpha_default, loss(f_divergence_type="forward_kl"))
    assert torch.allclose(loss(f_divergence_type="alpha_divergence", convention="trl1"), loss())
    # JS: f'(u) = log(2u / (1 + u))
    u_w, u_l = torch.exp(h_w), torch.exp(h_l)
    js = -F.logsigmoid(BETA * (torch.log(2 * u_w / (1 + u_w)) - torch.log(2 * u_l / (1 + u_l))))
    assert torch.allclose(loss(f_divergence_type="js_divergence"), js)


def test_bco_running_mean_shift():
    delta = 0.03
    shifted = L.dpo_loss(*PAIR, beta=BETA, loss_type="bco_pair", bco_running_mean=torch.tensor(delta)).losses
    expected = -F.logsigmoid(t(0.05 - delta)) - F.logsigmoid(t(0.1 + delta))
    assert torch.allclose(shifted, expected)
    unshifted = L.dpo_loss(*PAIR, beta=BETA, loss_type="bco_pair", bco_running_mean=0.0).losses
    assert unshifted.item() == pytest.approx(1.312856, abs=1e-6)


def test_aot_pair_is_alias_of_aot_unpaired():
    pc, pr, rc, rr = (-torch.rand(7, dtype=torch.float64) * 30 for _ in range(4))
    old = L.dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type="aot_pair", label_smoothing=0.1).losses
    new = L.dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type="aot_unpaired", label_smoothing=0.1).losses
    assert torch.equal(old, new)


def test_reference_free_uses_zero_reference():
    pc, pr = t(-10.0), t(-12.0)
    free = L.dpo_loss(pc, pr, None, None, beta=BETA, reference_free=True)
    zero = L.dpo_loss(pc, pr, t(0.0), t(0.0), beta=BETA)
    assert torch.equal(free.losses, zero.losses) and free.chosen_rewards.item() == pytest.approx(-1.0)


def test_sft_and_combined_losses():
    nll = t(2.5)
    assert L.dpo_loss(*PAIR, beta=BETA, loss_type="sft", chosen_nll=nll).losses.item() == 2.5
    mixed = L.combine_dpo_losses(
        *PAIR,
        beta=BETA,
        loss_types=["sigmoid", "bco_pair", "sft"],
        loss_weights=[0.8, 0.2, 1.0],
        chosen_nll=nll,
    )
    assert mixed.losses.item() == pytest.approx(0.8 * 0.620957 + 0.2 * 1.312856 + 2.5, abs=1e-6)
    assert mixed.chosen_rewards.item() == pytest.approx(0.05)


def test_rewards_are_detached_and_losses_differentiable():
    pc = t(-10.0).requires_grad_()
    out = L.dpo_loss(pc, *PAIR[1:], beta=BETA)
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad
    (grad,) = torch.autograd.grad(out.losses.sum(), pc)
    assert grad.item() == pytest.approx(-BETA * torch.sigmoid(t(-0.15)).item())  # d/dπ_w −log σ(βΔ)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "dpo"}, "Unknown DPO loss_type 'dpo'"),
        ({"loss_type": "ipo", "chosen_lengths": None}, "needs chosen_lengths and rejected_lengths"),
        ({"loss_type": "nca_pair", "f_divergence_type": "js_divergence"}, "only defined for loss types"),
        ({"f_divergence_type": "kl"}, "Unknown f_divergence_type 'kl'"),
        ({"loss_type": "sft"}, "needs chosen_nll"),
        ({"convention": "trl0"}, "convention must be 'swift' or 'trl1'"),
    ],
)
def test_dpo_errors_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L.dpo_loss(*PAIR, beta=BETA, **kwargs)


def test_other_errors():
    with pytest.raises(ValueError, match="Unknown CPO loss_type 'simpo'"):
        L.cpo_loss(t(-1.0), t(-2.0), beta=BETA, loss_type="simpo")
    with pytest.raises(ValueError, match="one weight per loss_type"):
        L.combine_dpo_losses(*PAIR, beta=BETA, loss_types=["sigmoid", "hinge"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="Unknown KTO loss_type"):
        L.kto_loss(t(-1.0), t(-1.0), torch.tensor([True]), t(0.0), beta=BETA, loss_type="bco")
    with pytest.raises(ValueError, match="Unknown reward-model loss_type"):
        L.reward_model_loss(t(1.0), t(0.0), loss_type="mse")
    with pytest.raises(ValueError, match="unless reference_free=True"):
        L.dpo_loss(t(-1.0), t(-2.0), None, None, beta=BETA)


def test_kto_kl_estimate_clamps_and_detaches():
    policy = t(-3.0, -5.0).requires_grad_()
    assert L.kto_kl_estimate(policy, t(-4.0, -5.0)).item() == pytest.approx(0.5)
    clamped = L.kto_kl_estimate(policy, t(-1.0, -1.0))
    assert clamped.item() == 0.0 and not clamped.requires_grad


# ---------------------------------------------------------------- parity with TRL 1.x


class _Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


class _FusedHeadModel:
    """Stands in for a model patched with TRL's fused LM head: returns fixed per-token log-probs."""

    training = True

    def __init__(self, log_probs_by_width):
        self.log_probs_by_width = log_probs_by_width  # input width T -> (N, T - 1) log-probs

    def __call__(self, input_ids, **kwargs):
        log_probs = self.log_probs_by_width[input_ids.shape[1]]
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _bare(trainer_cls, **attrs):
    # Skip __init__ (it wants a model and datasets): set only what the loss code reads.
    trainer = object.__new__(trainer_cls)
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.__dict__.update(
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        _metrics=metrics,
        _total_train_tokens=0,
        _tp_size=1,
        **attrs,
    )
    return trainer


def _completion_batch(n, width, dtype, seed):
    """Random per-token log-probs (leaf) and a completion mask: prompt first, completion of 1..width-2 tokens."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width - 1, (n,), generator=gen)
    completion_mask = (torch.arange(width) >= width - lengths[:, None]).long()  # (n, T)
    per_token = (-torch.rand(n, width - 1, generator=gen, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    shift_mask = completion_mask[:, 1:]  # (n, T - 1)
    return per_token, completion_mask, shift_mask


DPO_PARITY_CASES = [(lt, "reverse_kl", 1.0) for lt in L.DPO_LOSS_TYPES] + [
    (lt, f_div, coef)
    for lt in sorted(L._F_DIVERGENCE_LOSS_TYPES)
    for f_div, coef in [
        ("forward_kl", 1.0),
        ("js_divergence", 1.0),
        ("alpha_divergence", 0.5),
        ("alpha_divergence", 1.7),
        ("alpha_divergence", 1.0),
    ]
]
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.1, "sigmoid": 0.1}


def _dpo_parity(loss_types, loss_weights, f_div, coef, seed):
    trl = pytest.importorskip("trl")
    batch, width = 6, 12
    # TRL's α-divergence clamp table has no float64 entry.
    dtype = torch.float32 if f_div == "alpha_divergence" else torch.float64
    per_token, completion_mask, shift_mask = _completion_batch(2 * batch, width, dtype, seed)
    # Reference within a few nats of the policy, as in training (f-divergences exponentiate the log-ratio).
    noise = torch.randn(2 * batch, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref = ((per_token * shift_mask).sum(dim=1).detach().double() + 2 * noise).to(dtype)
    ref_chosen, ref_rejected = ref.chunk(2)
    smoothing = max(SMOOTHING.get(lt, 0.0) for lt in loss_types)
    model = _FusedHeadModel({width: per_token * shift_mask})
    trainer = _bare(
        trl.DPOTrainer,
        model=model,
        precompute_ref_logps=True,
        ld_alpha=None,
        beta=BETA,
        loss_types=list(loss_types),
        loss_weights=loss_weights or [1.0] * len(loss_types),
        f_divergence_type=f_div,
        f_alpha_divergence_coef=coef,
        label_smoothing=smoothing,
        use_weighting=False,
        args=SimpleNamespace(discopop_tau=0.05),
    )
    inputs = {
        "input_ids": torch.zeros(2 * batch, width, dtype=torch.long),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    trl_loss = trainer._compute_loss(model, inputs, return_outputs=False)
    (trl_grad,) = torch.autograd.grad(trl_loss, per_token)

    logps = (per_token * shift_mask).sum(dim=1)  # (2B,)
    lengths = completion_mask.sum(dim=1)  # (2B,)
    # TRL's sft term: token mean of the chosen NLL over the whole batch.
    chosen_nll = -per_token[:batch][shift_mask[:batch].bool()].mean()
    ours = L.combine_dpo_losses(
        *logps.chunk(2),
        ref_chosen,
        ref_rejected,
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=BETA,
        label_smoothing=smoothing,
        chosen_lengths=lengths[:batch],
        rejected_lengths=lengths[batch:],
        f_divergence_type=f_div,
        f_alpha_divergence_coef=coef,
        chosen_nll=chosen_nll,
        convention="trl1",
    )
    our_loss = ours.losses.mean()
    (our_grad,) = torch.autograd.grad(our_loss, per_token)
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-6, atol=1e-6)
    assert torch.allclose(ours.chosen_rewards.double(), BETA * (logps[:batch] - ref_chosen).detach().double())


@pytest.mark.parametrize("loss_type, f_div, coef", DPO_PARITY_CASES)
def test_dpo_parity_with_trl(loss_type, f_div, coef):
    for seed in (0, 1, 2):
        _dpo_parity([loss_type], None, f_div, coef, seed)


def test_dpo_loss_weights_parity_with_trl():
    _dpo_parity(["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], "reverse_kl", 1.0, seed=3)
    _dpo_parity(["ipo", "apo_zero"], [0.5, 2.0], "reverse_kl", 1.0, seed=4)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "simpo"])
def test_cpo_simpo_parity_with_trl(loss_type):
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    smoothing = 0.0 if loss_type in ("hinge", "ipo") else 0.1
    beta = 2.0 if loss_type == "simpo" else BETA
    trainer = _bare(
        CPOTrainer, alpha=0.0, beta=beta, label_smoothing=smoothing, loss_type=loss_type, simpo_gamma=1.3
    )
    chosen, rejected = (-torch.rand(2, 8, dtype=torch.float64) * 4).requires_grad_().unbind(0)
    trl_out = trainer.cpo_loss(chosen, rejected)
    if loss_type == "simpo":
        ours = L.simpo_loss(chosen, rejected, beta=beta, gamma=1.3, label_smoothing=smoothing)
    else:
        ours = L.cpo_loss(chosen, rejected, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    for our_tensor, trl_tensor in zip(ours, trl_out):
        torch.testing.assert_close(our_tensor, trl_tensor, rtol=1e-6, atol=1e-6)
    grads = [torch.autograd.grad(x.sum(), (chosen, rejected)) for x in (ours.losses, trl_out[0])]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


def test_orpo_parity_with_trl():
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    trainer = _bare(ORPOTrainer, beta=BETA)
    # Length-averaged log-probs, including values right next to 0 where log(1 − p) cancels.
    chosen = torch.cat([-torch.rand(6) * 5, torch.tensor([-1e-6, -0.69])]).requires_grad_()
    rejected = torch.cat([-torch.rand(6) * 5, torch.tensor([-0.7, -30.0])]).requires_grad_()
    trl_losses, trl_chosen, trl_rejected, trl_ratio, trl_log_odds = trainer.odds_ratio_loss(chosen, rejected)
    ours = L.orpo_loss(chosen, rejected, beta=BETA)
    # TRL returns +β·log σ(·) and subtracts it from the NLL; we return the loss to add.
    torch.testing.assert_close(ours.losses, -trl_losses, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)
    torch.testing.assert_close(ours.log_odds_ratio.mean(), trl_ratio.detach())
    torch.testing.assert_close(ours.log_odds_chosen.mean(), trl_log_odds.detach())
    grads = [torch.autograd.grad(x.sum(), (chosen, rejected)) for x in (ours.losses, -trl_losses)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_type, kl_shift", [("kto", 0.0), ("kto", 5.0), ("apo_zero_unpaired", 0.0)])
def test_kto_parity_with_trl(loss_type, kl_shift):
    trl = pytest.importorskip("trl")
    batch, width, kl_width = 8, 10, 12
    per_token, completion_mask, shift_mask = _completion_batch(batch, width, torch.float64, seed=5)
    kl_per_token, kl_mask, kl_shift_mask = _completion_batch(batch, kl_width, torch.float64, seed=6)
    gen = torch.Generator().manual_seed(7)
    ref_logps = -torch.rand(batch, generator=gen, dtype=torch.float64) * 2 * width
    # kl_shift moves the policy/reference gap on mismatched pairs so that both sides of the clamp are hit.
    ref_kl_logps = (kl_per_token * kl_shift_mask).sum(1).detach() + kl_shift - 2.5
    labels = torch.tensor([True, False, True, True, False, True, False, False])
    model = _FusedHeadModel(
        {width: per_token * shift_mask, kl_width: (kl_per_token * kl_shift_mask).detach()}
    )
    calculate_kl = loss_type == "kto"
    trainer = _bare(
        trl.KTOTrainer,
        model=model,
        precompute_ref_logps=True,
        calculate_KL=calculate_kl,
        beta=BETA,
        loss_type=loss_type,
        desirable_weight=1.3,
        undesirable_weight=0.7,
    )
    inputs = {
        "input_ids": torch.zeros(batch, width, dtype=torch.long),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "KL_input_ids": torch.zeros(batch, kl_width, dtype=torch.long),
        "KL_attention_mask": torch.ones_like(kl_mask),
        "KL_completion_mask": kl_mask,
        "label": labels,
        "ref_logps": ref_logps,
        "ref_KL_logps": ref_kl_logps,
    }
    trl_loss = trainer._compute_loss(model, inputs, return_outputs=False)
    (trl_grad,) = torch.autograd.grad(trl_loss, per_token)

    policy_kl_logps = (kl_per_token * kl_shift_mask).sum(1)
    kl = L.kto_kl_estimate(policy_kl_logps, ref_kl_logps) if calculate_kl else torch.zeros(())
    assert (kl.item() > 0) == (calculate_kl and kl_shift == 0.0)
    ours = L.kto_loss(
        (per_token * shift_mask).sum(1),
        ref_logps,
        labels,
        kl,
        beta=BETA,
        loss_type=loss_type,
        desirable_weight=1.3,
        undesirable_weight=0.7,
    )
    our_loss = ours.losses.mean()
    (our_grad,) = torch.autograd.grad(our_loss, per_token)
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-6, abs=1e-6)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("margin, center", [(False, None), (True, None), (True, 0.01)])
def test_reward_model_parity_with_trl(margin, center):
    trl = pytest.importorskip("trl")
    batch = 5
    scores = torch.randn(2 * batch, 1, dtype=torch.float64, requires_grad=True)  # (2B, 1) reward head
    model = SimpleNamespace(training=True)
    model_fn = lambda **kwargs: SimpleNamespace(logits=scores)  # noqa: E731
    trainer = _bare(trl.RewardTrainer, model=model, args=SimpleNamespace(center_rewards_coefficient=center))
    inputs = {
        "input_ids": torch.zeros(2 * batch, 4, dtype=torch.long),
        "attention_mask": torch.ones(2 * batch, 4),
    }
    margins = torch.rand(batch, dtype=torch.float64)
    if margin:
        inputs["margin"] = margins
    trl_loss = trainer.compute_loss(model_fn, inputs)
    chosen, rejected = scores.squeeze(-1).chunk(2)
    ours = L.reward_model_loss(
        chosen, rejected, margin=margins if margin else None, center_rewards_coefficient=center
    )
    assert ours.losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-6, abs=1e-6)
    grads = [torch.autograd.grad(x, scores)[0] for x in (ours.losses.mean(), trl_loss)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)
