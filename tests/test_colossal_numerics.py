"""ColossalChat's objectives, as its flags ask for them, against hand values of its formulas
(coati/models/loss.py: DpoLoss, LogSigLoss, LogExpLoss; train_kto.py's weight bound)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignkit.commands.colossal.run import parse_script
from alignkit.commands.colossal.translate import translate
from alignkit.errors import AlignkitError
from alignkit.losses.preference import dpo_loss, reward_model_loss, simpo_loss

PAIRS = str(Path(__file__).parent / "fixtures" / "data" / "colossalchat_preference.jsonl")


def values_of(argv: list[str]) -> dict:
    script, given = parse_script(argv)
    return translate(script, given).values


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def colossal_dpo(pc, pr, rc, rr, beta, gamma):
    """ColossalChat's DpoLoss on (already summed or averaged) log-probs; rc/rr None: no reference."""
    ref = 0.0 if rc is None else rc - rr
    return -math.log(sig(beta * ((pc - pr) - ref - gamma / beta)))


def test_simpo_loss_flags_give_colossalchat_simpo():
    """--loss_type simpo_loss --disable_reference_model: -log σ(β(avg_c − avg_r) − γ), γ 1.4 unless given."""
    values = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--loss_type", "simpo_loss",
                        "--disable_reference_model", "--beta", "2.0"])
    avg_c, avg_r = torch.tensor([-0.7]), torch.tensor([-1.1])
    ours = simpo_loss(avg_c, avg_r, beta=values["beta"], gamma=values["simpo_gamma"]).losses.item()
    assert values["cpo_alpha"] == 0.0
    assert ours == pytest.approx(colossal_dpo(-0.7, -1.1, None, None, 2.0, 1.4), rel=1e-6)
    assert ours == pytest.approx(-math.log(sig(2.0 * 0.4 - 1.4)), rel=1e-6)  # 0.8393 by hand


def test_dpo_loss_flags_without_reference_give_zero_reference_log_probs():
    values = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--disable_reference_model"])
    assert values["reference_free"] is True and values["loss_type"] == ["sigmoid"]
    ours = dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), None, None, beta=0.1, reference_free=True)
    assert ours.losses.item() == pytest.approx(colossal_dpo(-3.0, -5.0, None, None, 0.1, 0.0), rel=1e-6)


def test_length_normalised_dpo_with_reference_is_sigmoid_norm():
    """--length_normalization with a reference: both models' log-probs averaged per answer, as ColossalChat's
    calc_masked_log_probs does, which is alignkit's sigmoid_norm."""
    values = values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--length_normalization"])
    assert values["loss_type"] == ["sigmoid_norm"]
    pc, pr, rc, rr, lc, lr = -6.0, -9.0, -7.0, -8.0, 3, 4
    ours = dpo_loss(torch.tensor([pc]), torch.tensor([pr]), torch.tensor([rc]), torch.tensor([rr]), beta=0.1,
                    loss_type="sigmoid_norm", chosen_lengths=torch.tensor([lc]), rejected_lengths=torch.tensor([lr]))
    theirs = colossal_dpo(pc / lc, pr / lr, rc / lc, rr / lr, 0.1, 0.0)
    assert ours.losses.item() == pytest.approx(theirs, rel=1e-6)
    with pytest.raises(AlignkitError, match="--gamma 0.5"):
        values_of(["train_dpo", "--pretrain", "m", "--dataset", PAIRS, "--length_normalization", "--gamma", "0.5"])


@pytest.mark.parametrize("loss_fn", ["log_sig", "log_exp"])
def test_rm_loss_fn_matches_colossalchat(loss_fn):
    values = values_of(["train_rm", "--pretrain", "m", "--dataset", PAIRS, "--loss_fn", loss_fn])
    chosen, rejected = torch.tensor([0.3, -1.0]), torch.tensor([1.2, -2.5])
    ours = reward_model_loss(chosen, rejected, loss_type=values["loss_type"][0]).losses.mean().item()
    if loss_fn == "log_sig":
        theirs = -torch.nn.functional.logsigmoid(chosen - rejected).mean().item()
    else:
        theirs = torch.log(1 + torch.exp(rejected - chosen)).mean().item()
    assert ours == pytest.approx(theirs, rel=1e-6)


def write_kto(path: Path, labels: list[bool]) -> str:
    rows = [{"prompt": [{"from": "user", "content": "q"}], "completion": {"from": "assistant", "content": "a"},
             "label": label} for label in labels]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_kto_auto_weight_rescales_the_desirable_weight_into_the_bound(tmp_path):
    data = write_kto(tmp_path / "kto.jsonl", [True] * 6 + [False] * 2)  # ratio 3 with equal weights
    with pytest.raises(AlignkitError, match=r"= 3 is outside \[1, 4/3\]"):
        values_of(["train_kto", "--pretrain", "m", "--dataset", data])
    values = values_of(["train_kto", "--pretrain", "m", "--dataset", data, "--auto_weight"])
    assert (values["desirable_weight"], values["undesirable_weight"]) == (pytest.approx(1 / 3), 1.0)
    inside = write_kto(tmp_path / "ok.jsonl", [True] * 5 + [False] * 4)  # 1.25: left alone
    assert values_of(["train_kto", "--pretrain", "m", "--dataset", inside, "--auto_weight"])["desirable_weight"] == 1.0


def test_orpo_lam_is_the_weight_of_the_odds_ratio_term():
    from alignkit.losses.preference import orpo_loss

    beta = values_of(["train_orpo", "--pretrain", "m", "--dataset", PAIRS, "--lam", "0.5"])["beta"]
    # ColossalChat: loss = NLL − λ·log σ(log-odds ratio); the λ multiplies the same term here.
    a = orpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=beta).losses.item()
    b = orpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=0.1).losses.item()
    assert a == pytest.approx(5 * b, rel=1e-6)
    # The odds term by hand: −log σ(log odds(e^-0.5) − log odds(e^-1.5)).
    def log_odds(lp):
        return lp - math.log(1 - math.exp(lp))
    assert b == pytest.approx(-0.1 * math.log(sig(log_odds(-0.5) - log_odds(-1.5))), rel=1e-6)


def test_unset_warmup_is_colossalchats_rounded_down_share_of_the_steps(tmp_path):
    rows = [{"messages": [{"from": "user", "content": f"q{i}"}, {"from": "assistant", "content": "a"}]}
            for i in range(90)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # 90 rows // batch 2 = 45 batches // accumulation 2 = 22 steps per epoch; int(3 x 0.025 x 22) = 1.
    values = values_of(["train_sft", "--pretrain", "m", "--dataset", str(data), "--batch_size", "2",
                        "--accumulation_steps", "2"])
    assert (values["warmup_steps"], values["warmup_ratio"]) == (1, 0.0)
    # With one epoch: int(0.55) = 0, no warm-up (alignkit's own ratio rule would round up to 1).
    assert values_of(["train_sft", "--pretrain", "m", "--dataset", str(data), "--batch_size", "2",
                      "--accumulation_steps", "2", "--max_epochs", "1"])["warmup_steps"] == 0
    ppo = values_of(["train_ppo", "--pretrain", "m", "--prompt_dataset", "p", "--rm_checkpoint_path", "r",
                     "--num_episodes", "100"])
    assert ppo["warmup_steps"] == 2
