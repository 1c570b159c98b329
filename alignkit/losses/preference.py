"""Offline preference objectives as pure functions on sequence log-probabilities.

Inputs are per-sequence log-probabilities of the completion, shape (B,), computed once elsewhere
(summed over completion tokens unless a docstring says "length-averaged"). Every function returns a
NamedTuple whose ``losses`` are per-example, shape (B,): the caller takes ``.mean()`` and adds the terms
that need token-level inputs (the chosen NLL for ``rpo_alpha``, ``cpo_alpha`` and ORPO). Rewards are
detached and only logged.

Where TRL 1.x and ms-swift (TRL 0.x) disagree, ``dpo_loss(convention=...)`` picks one; the default
``"swift"`` keeps ms-swift's meaning of a flag because our users arrive with ms-swift command lines.
docs/objectives.md lists every formula with its CLI flags.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

SIMPO_DEFAULT_GAMMA = 1.0
# ε the EXO paper uses, and what TRL 0.x substitutes for label_smoothing=0 under loss_type="exo_pair".
EXO_DEFAULT_EPS = 1e-3

# fmt: off
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# The f-DPO reparameterisation leaves a β·log Z(x) term that cancels only in the chosen − rejected
# score difference, so only losses of that difference generalise (same set as TRL 1.x).
_F_DIVERGENCE_LOSS_TYPES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
# fmt: on


class PreferenceLoss(NamedTuple):
    losses: Tensor  # (B,) per-example loss
    chosen_rewards: Tensor  # (B,) detached implicit reward of the chosen completion
    rejected_rewards: Tensor  # (B,)


class ORPOLoss(NamedTuple):
    losses: Tensor  # (B,) -β·log σ(log odds ratio); the caller adds the chosen NLL
    chosen_rewards: Tensor  # (B,) β·log p(y_w|x), detached
    rejected_rewards: Tensor  # (B,)
    log_odds_ratio: Tensor  # (B,) log σ(log odds ratio), detached (TRL's metric name)
    log_odds_chosen: Tensor  # (B,) log odds(y_w) − log odds(y_l), detached (TRL's metric name)


class KTOLoss(NamedTuple):
    losses: Tensor  # (B,) weighted per-example loss, in input order
    rewards: Tensor  # (B,) β·log-ratio, detached; split by `labels` for chosen/rejected metrics


def _f_divergence_scores(logratios: Tensor, f_divergence_type: str, alpha: float, convention: str) -> Tensor:
    """f'(u) at u = π/π_ref, written in log-ratio space; Table 1 of https://arxiv.org/abs/2309.16240.

    reverse_kl: log u; forward_kl: 1 − 1/u; js_divergence: log(2u/(1+u));
    alpha_divergence: (1 − u^(−a))/a, where a is the paper's α. ``convention="swift"`` (TRL 0.x) passes
    a = f_alpha_divergence_coef, so the default 1.0 is forward KL; ``"trl1"`` writes
    f'(u) = (u^(α−1) − 1)/(α−1), i.e. a = 1 − coef, so the default 1.0 is reverse KL.
    """
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if f_divergence_type == "alpha_divergence":
        a = alpha if convention == "swift" else 1.0 - alpha
        if abs(a) < 1e-6:  # limit a → 0 is log u, the reverse KL
            return logratios
        # Clamp the exponent so exp stays finite after casting back (TRL 1.x uses the same bounds).
        t = (-a * logratios).float().clamp(max=11.0 if logratios.dtype == torch.float16 else 80.0)
        return ((torch.exp(t) - 1.0) / -a).to(logratios.dtype)
    raise ValueError(f"Unknown f_divergence_type {f_divergence_type!r}; expected one of {F_DIVERGENCE_TYPES}")


def _conservative(logits: Tensor, label_smoothing: float) -> Tensor:
    # cDPO (https://ericmitchell.ai/cdpo.pdf): the label is flipped with probability ε.
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    reference_free: bool = False,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    discopop_tau: float = 0.05,
    bco_running_mean: Tensor | float | None = None,
    chosen_nll: Tensor | None = None,
    convention: str = "swift",
) -> PreferenceLoss:
    r"""DPO and its pairwise variants (https://arxiv.org/abs/2305.18290).

    Symbols: π_w = ``policy_chosen_logps``, π_l = ``policy_rejected_logps``, ref_w/ref_l the reference
    log-probs, all (B,) and summed over completion tokens; |y_w|, |y_l| = ``chosen_lengths`` /
    ``rejected_lengths`` (B,). Log-ratios h_w = π_w − ref_w, h_l = π_l − ref_l; scores s = f'(exp h)
    (``f_divergence_type``, = h for reverse KL); Δ = s_w − s_l; ε = ``label_smoothing``.

    - sigmoid   −log σ(βΔ)                                    Eq. 7; cDPO if ε > 0 and convention="swift"
    - hinge     relu(1 − βΔ)                                  SLiC, https://arxiv.org/abs/2305.10425
    - ipo       (s_w/|y_w| − s_l/|y_l| − 1/(2β))²             Eq. 17 of https://arxiv.org/abs/2310.12036
    - exo_pair  KL(softmax(βΔ, 0) ‖ (1−ε, ε))                 Eq. 16 of https://arxiv.org/abs/2402.00856
    - nca_pair  −log σ(βh_w) − ½log σ(−βh_w) − ½log σ(−βh_l)  https://arxiv.org/abs/2402.05369
    - robust    [−(1−ε)log σ(βΔ) + ε log σ(−βΔ)] / (1−2ε)    https://arxiv.org/abs/2403.00409
    - bco_pair  −log σ(βh_w − δ) − log σ(−(βh_l − δ))         https://arxiv.org/abs/2404.04656
    - sppo_hard (h_w − 1/(2β))² + (h_l + 1/(2β))²             Eq. 4.7 of https://arxiv.org/abs/2405.00675, P∈{0,1}
    - aot       cDPO on sort(π_w − π_l) − sort(ref_w − ref_l)  https://arxiv.org/abs/2406.05882 (paired)
    - aot_unpaired  cDPO on sort(h_w) − sort(h_l)             same paper; TRL 0.x calls it "aot_pair"
    - apo_zero  1 − σ(βh_w) + σ(βh_l)                         Eq. 7 of https://arxiv.org/abs/2408.06266
    - apo_down  σ(βh_w) + 1 − σ(β(h_w − h_l))                 Eq. 8 of the same paper
    - discopop  (1−m)·(−log σ(βΔ)) + m·exp(−βΔ), m = σ(βΔ/τ) Eq. 5 of https://arxiv.org/abs/2406.08414
    - sft       ``chosen_nll`` (B,) or scalar, required: the NLL term alone, so it can be mixed with
                ``combine_dpo_losses`` as in MPO
    - sigmoid_norm  −log σ(β(s_w/|y_w| − s_l/|y_l|))          length-normalised DPO of Tülu 3,
                                                              https://arxiv.org/abs/2411.15124

    ``ipo`` and ``sigmoid_norm`` need the lengths (clamped at 1). δ = ``bco_running_mean``: None means
    no shift (TRL 1.x); ms-swift/TRL 0.x pass a running mean of the batch rewards β·[h_w, h_l], updated
    with the current batch before the call. ``discopop_tau`` = τ. ``reference_free`` sets ref = 0
    (rewards too), so the reference arguments may be None.

    ``convention`` ("swift" default, or "trl1") selects the meaning where the two disagree:
    sigmoid with ε > 0 is cDPO under "swift" and ignores ε under "trl1"; exo_pair with ε = 0 uses
    ε = 1e-3 under "swift" and raises under "trl1"; ``f_alpha_divergence_coef`` is the f-DPO paper's α
    under "swift" and 1 − α under "trl1" (see ``_f_divergence_scores``).

    Rewards are β·h (TRL's logged rewards), whatever the loss type.
    """
    if convention not in ("swift", "trl1"):
        raise ValueError(f"convention must be 'swift' or 'trl1', got {convention!r}")
    if loss_type == "aot_pair":  # TRL 0.x name of the unpaired variant
        loss_type = "aot_unpaired"
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"Unknown DPO loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if f_divergence_type != "reverse_kl" and loss_type not in _F_DIVERGENCE_LOSS_TYPES:
        raise ValueError(
            f"f_divergence_type={f_divergence_type!r} is only defined for loss types "
            f"{sorted(_F_DIVERGENCE_LOSS_TYPES)}, not {loss_type!r}; use reverse_kl."
        )
    if reference_free:
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    elif ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError("dpo_loss needs ref_chosen_logps and ref_rejected_logps unless reference_free=True")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # h_w, (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # h_l, (B,)
    args = (f_divergence_type, f_alpha_divergence_coef, convention)
    chosen_scores = _f_divergence_scores(chosen_logratios, *args)  # s_w, (B,)
    rejected_scores = _f_divergence_scores(rejected_logratios, *args)  # s_l, (B,)
    logits = beta * (chosen_scores - rejected_scores)  # βΔ, (B,)
    eps = label_smoothing

    if loss_type == "sigmoid":
        losses = _conservative(logits, eps) if convention == "swift" else -F.logsigmoid(logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - logits)
    elif loss_type in ("ipo", "sigmoid_norm"):
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type={loss_type!r} needs chosen_lengths and rejected_lengths")
        # Length-normalised scores: the paper's IPO results use per-token averages (TRL 0.x and 1.x agree).
        chosen_norm = chosen_scores / chosen_lengths.clamp(min=1)  # (B,)
        rejected_norm = rejected_scores / rejected_lengths.clamp(min=1)  # (B,)
        norm_delta = chosen_norm - rejected_norm
        if loss_type == "ipo":
            losses = (norm_delta - 1 / (2 * beta)) ** 2  # β plays the paper's τ
        else:
            losses = -F.logsigmoid(beta * norm_delta)
    elif loss_type == "exo_pair":
        if eps == 0.0:
            if convention == "trl1":
                raise ValueError(f"exo_pair needs label_smoothing > 0; the EXO paper uses {EXO_DEFAULT_EPS}")
            eps = EXO_DEFAULT_EPS
        # Eq. 16, K = 2: Σ_k q_k (log q_k − log p_k) with q = (σ(βΔ), σ(−βΔ)) and p = (1 − ε, ε).
        q_w, q_l = torch.sigmoid(logits), torch.sigmoid(-logits)
        losses = q_w * (F.logsigmoid(logits) - math.log1p(-eps)) + q_l * (
            F.logsigmoid(-logits) - math.log(eps)
        )
    elif loss_type == "nca_pair":
        chosen, rejected = beta * chosen_logratios, beta * rejected_logratios
        losses = -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)
    elif loss_type == "robust":
        # Unbiased under label noise ε: the flipped term enters with a minus sign.
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    elif loss_type == "bco_pair":
        delta = 0.0 if bco_running_mean is None else bco_running_mean
        chosen, rejected = beta * chosen_logratios - delta, beta * rejected_logratios - delta
        losses = -F.logsigmoid(chosen) - F.logsigmoid(-rejected)  # chosen → class 1, rejected → class 0
    elif loss_type == "sppo_hard":
        losses = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    elif loss_type == "aot":
        # Sorting pairs the quantiles of the two distributions (first-order stochastic dominance).
        policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
        ref_sorted, _ = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0)
        losses = _conservative(beta * (policy_sorted - ref_sorted), eps)
    elif loss_type == "aot_unpaired":
        chosen_sorted, _ = torch.sort(chosen_logratios, dim=0)
        rejected_sorted, _ = torch.sort(rejected_logratios, dim=0)
        losses = _conservative(beta * (chosen_sorted - rejected_sorted), eps)
    elif loss_type == "apo_zero":
        losses = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "apo_down":
        chosen, margin = beta * chosen_logratios, beta * (chosen_logratios - rejected_logratios)
        losses = torch.sigmoid(chosen) + 1 - torch.sigmoid(margin)
    elif loss_type == "discopop":
        modulation = torch.sigmoid(logits / discopop_tau)  # m: logistic for Δ < 0, exponential for Δ > 0
        losses = -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    else:  # sft
        if chosen_nll is None:
            raise ValueError("loss_type='sft' needs chosen_nll (the chosen completions' NLL)")
        losses = chosen_nll.expand_as(policy_chosen_logps)

    return PreferenceLoss(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def combine_dpo_losses(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    loss_types: Sequence[str],
    loss_weights: Sequence[float] | None = None,
    **kwargs,
) -> PreferenceLoss:
    """Weighted sum of several ``dpo_loss`` types (``--loss_type a b c --loss_weights wa wb wc``).

    MPO (https://arxiv.org/abs/2411.10442) mixes sigmoid, bco_pair and sft this way. losses =
    Σ_k w_k · L_k, (B,); weights default to 1. ``kwargs`` go to every ``dpo_loss`` call. After an
    ``aot`` term the per-example rows no longer line up with the inputs; only the mean is meaningful.
    """
    weights = [1.0] * len(loss_types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(loss_types) or not loss_types:
        raise ValueError(f"loss_weights {weights} must give one weight per loss_type in {list(loss_types)}")
    total = None
    for loss_type, weight in zip(loss_types, weights):
        out = dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            loss_type=loss_type,
            **kwargs,
        )
        total = weight * out.losses if total is None else total + weight * out.losses
    return PreferenceLoss(total, out.chosen_rewards, out.rejected_rewards)


def cpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Contrastive Preference Optimization, the reference-free preference term (https://arxiv.org/abs/2401.08417).

    sigmoid: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ), Eq. 3 at ε = 0; hinge: relu(1 − βΔ); ipo: (Δ − 1/(2β))².
    Δ = π_w − π_l with π_w = ``policy_chosen_logps``, π_l = ``policy_rejected_logps``, (B,) summed
    log-probs (length-averaged for ipo, as TRL computes them); ε = ``label_smoothing`` (sigmoid only).
    The behaviour-cloning term ``cpo_alpha``·NLL(y_w) is added by the caller. Rewards are β·π.
    """
    delta = policy_chosen_logps - policy_rejected_logps  # Δ, (B,)
    if loss_type == "sigmoid":
        losses = _conservative(beta * delta, label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2  # Eq. 17 of the IPO paper, β as τ
    else:
        raise ValueError(f"Unknown CPO loss_type {loss_type!r}; expected 'sigmoid', 'hinge' or 'ipo'")
    return PreferenceLoss(losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach())


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Simple Preference Optimization (https://arxiv.org/abs/2405.14734), Eq. 6.

    L = −log σ(β·π̄_w − β·π̄_l − γ), with cDPO smoothing ε as in TRL's CPOTrainer (loss_type="simpo").
    π̄_w = ``policy_chosen_logps``, π̄_l = ``policy_rejected_logps``: length-averaged log-probs (B,);
    γ = ``gamma`` the target reward margin; ε = ``label_smoothing``. Rewards are β·π̄.
    """
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (B,)
    return PreferenceLoss(
        _conservative(logits, label_smoothing),
        beta * policy_chosen_logps.detach(),
        beta * policy_rejected_logps.detach(),
    )


def _log1mexp(x: Tensor) -> Tensor:
    # log(1 − exp(x)) for x < 0; branch at −ln 2 to avoid cancellation (Mächler 2012).
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, *, beta: float) -> ORPOLoss:
    """Odds Ratio Preference Optimization, the odds-ratio term (https://arxiv.org/abs/2403.07691).

    odds(y) = p/(1 − p); L_OR = −log σ(log odds(y_w) − log odds(y_l)) (Eq. 7); losses = β·L_OR, the
    caller adds NLL(y_w) (Eq. 6, λ = β). log odds(y) = log p − log(1 − p), with log(1 − p) computed
    stably from log p. p_w, p_l = exp(``policy_chosen_logps``), exp(``policy_rejected_logps``):
    length-averaged log-probs (B,), cast to float32. Rewards are β·log p.
    """
    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))  # (B,)
    ratio = F.logsigmoid(log_odds)
    return ORPOLoss(
        -beta * ratio, beta * chosen.detach(), beta * rejected.detach(), ratio.detach(), log_odds.detach()
    )


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z_ref = max(0, mean(log π(y'|x) − log π_ref(y'|x))), detached (Eq. 7 of KTO).

    y' are completions paired with mismatched prompts (``alignkit.data.collate.kl_rows``), so the mean is a
    biased but cheap estimate of KL(π ‖ π_ref). Both inputs (n,) summed log-probs of all the mismatched pairs
    of one optimizer step; returns a scalar. ``kto_reference_point`` is the same from sums, for pairs spread
    over micro-batches and processes.
    """
    return kto_reference_point((policy_kl_logps - ref_kl_logps).sum(), len(policy_kl_logps))


def kto_reference_point(kl_sum: Tensor, count: int | Tensor) -> Tensor:
    """z_ref = max(0, Σ (log π(y'|x) − log π_ref(y'|x)) / n) from the sum over n mismatched pairs, detached."""
    return (kl_sum / count).detach().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> KTOLoss:
    """Kahneman–Tversky Optimization (https://arxiv.org/abs/2402.01306): L = λ_y − v(x, y), Eq. 7.

    r = π − ref (``policy_logps`` − ``ref_logps``, (B,) summed); z = ``kl`` (scalar, from ``kto_kl_estimate``);
    desirable (``labels`` True): λ_D·(1 − σ(β(r − z)));  undesirable: λ_U·(1 − σ(β(z − r))).
    λ_D, λ_U = ``desirable_weight``, ``undesirable_weight``. ``loss_type="apo_zero_unpaired"`` drops z:
    1 − σ(βr) / σ(βr) (unpaired Eq. 7 of https://arxiv.org/abs/2408.06266). Rewards β·r, in input order.
    """
    logratios = policy_logps - ref_logps  # r, (B,)
    if loss_type == "kto":
        desirable = 1 - torch.sigmoid(beta * (logratios - kl))
        undesirable = 1 - torch.sigmoid(beta * (kl - logratios))
    elif loss_type == "apo_zero_unpaired":
        desirable = 1 - torch.sigmoid(beta * logratios)
        undesirable = torch.sigmoid(beta * logratios)
    else:
        raise ValueError(f"Unknown KTO loss_type {loss_type!r}; expected 'kto' or 'apo_zero_unpaired'")
    losses = torch.where(labels.bool(), desirable_weight * desirable, undesirable_weight * undesirable)
    return KTOLoss(losses, beta * logratios.detach())


def reward_model_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    loss_type: str = "log_sig",
    margin: Tensor | float | None = None,
    center_rewards_coefficient: float | None = None,
) -> PreferenceLoss:
    """Pairwise reward-model loss.

    log_sig: −log σ(r_w − r_l − m), Bradley–Terry (Eq. 1 of https://arxiv.org/abs/2203.02155) with the
    margin m of Llama 2 (Eq. 2 of https://arxiv.org/abs/2307.09288); log_exp: log(1 + exp(r_l − r_w + m)),
    OpenRLHF's name for the same function (computed as softplus); hinge: relu(1 − (r_w − r_l − m)).
    Plus c·(r_w + r_l)², which keeps rewards centred on zero (https://arxiv.org/abs/2312.09244).
    r_w, r_l = ``chosen_rewards``, ``rejected_rewards`` (B,) scalar heads; m = ``margin`` (B,) or float;
    c = ``center_rewards_coefficient``. Returned rewards are the detached inputs.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        diff = diff - margin
    if loss_type == "log_sig":
        losses = -F.logsigmoid(diff)
    elif loss_type == "log_exp":
        losses = F.softplus(-diff)
    elif loss_type == "hinge":
        losses = torch.relu(1 - diff)
    else:
        raise ValueError(
            f"Unknown reward-model loss_type {loss_type!r}; expected 'log_sig', 'log_exp' or 'hinge'"
        )
    if center_rewards_coefficient is not None:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())
