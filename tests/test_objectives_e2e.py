"""Every --rlhf_type through `alignkit.cli.main` on the tiny model: finite losses, moved parameters, the
metric names users chart, step-1 identities (the first logged step is measured before any update), the
reward model's head, checkpoints and scoring, and KTO's data checks."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.data.collate import EncodedUnpaired, UnpairedCollator, kl_rows, split_prompt
from alignkit.data.template import Encoded

PAIR_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected", "nll_loss"}
EXPECTED_KEYS = {
    "dpo": PAIR_KEYS,
    "cpo": PAIR_KEYS,
    "simpo": PAIR_KEYS,
    "orpo": PAIR_KEYS | {"log_odds_ratio", "log_odds_chosen"},
    "kto": {"loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"},
    "rm": {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "mean_reward"},
}


def kto_file(directory: Path) -> str:
    """ms-swift unpaired rows (`messages` + `label`), alternately desirable and undesirable."""
    path = directory / "kto.jsonl"
    if not path.exists():
        rows = [
            {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"Answer: {a + b + i % 2}"}], "label": i % 2 == 0}
            for i, (a, b) in enumerate([(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)])
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run(tiny_model_dir, out: Path, rlhf_type: str, *flags: str, batch_size: int = 2, steps: int = 2) -> int:
    data, val = "arith-pref#8", "arith-pref:test#4"
    if rlhf_type == "kto":
        data = val = kto_file(out.parent)
    return main([
        "rlhf", "--rlhf_type", rlhf_type, "--model", tiny_model_dir, "--dataset", data, "--val_dataset", val,
        "--max_steps", str(steps), "--batch_size", str(batch_size), "--eval_batch_size", "2",
        "--logging_steps", "1", "--learning_rate", "1e-2", "--output_dir", str(out), "--dtype", "fp32",
        "--report_to", "none", "--dataset_shuffle", "false", *flags,
    ])


def run_dir_of(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir_of(out) / "logging.jsonl").read_text().splitlines()]


def last_checkpoint(out: Path) -> Path:
    return max(run_dir_of(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def assert_trained(tiny_model_dir, out: Path, train_type: str) -> None:
    checkpoint = last_checkpoint(out)
    if train_type == "lora":
        adapter = load_file(checkpoint / "adapter_model.safetensors")
        lora_b = [t for k, t in adapter.items() if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero
    else:
        trained = load_file(checkpoint / "model.safetensors")
        initial = load_file(Path(tiny_model_dir) / "model.safetensors")
        assert [k for k in initial if not torch.equal(initial[k], trained[k])]


@pytest.mark.parametrize("train_type", ["lora", "full"])
@pytest.mark.parametrize("rlhf_type", ["dpo", "cpo", "simpo", "orpo", "kto", "rm"])
def test_every_rlhf_type_trains_end_to_end(tiny_model_dir, tmp_path, rlhf_type, train_type):
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, rlhf_type, "--train_type", train_type) == 0
    logged = records(out)
    train_steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in train_steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train_steps)
    assert EXPECTED_KEYS[rlhf_type] <= set(train_steps[0])
    assert {f"eval_{k}" for k in EXPECTED_KEYS[rlhf_type]} <= set(logged[-1])
    assert json.loads((run_dir_of(out) / "args.json").read_text())["rlhf_type"] == rlhf_type  # never rewritten
    assert_trained(tiny_model_dir, out, train_type)
    if rlhf_type == "rm":
        assert (last_checkpoint(out) / "value_head.safetensors").is_file()


@pytest.mark.parametrize(
    "flags",
    [
        ["--loss_type", "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2", "1.0"],
        ["--loss_type", "ipo", "--ld_alpha", "0.5"],
        ["--loss_type", "aot", "--label_smoothing", "0.1", "--loss_convention", "trl1"],
        ["--loss_type", "discopop", "--f_divergence_type", "js_divergence", "--reference_free"],
        ["--loss_type", "apo_zero", "--rpo_alpha", "0.5"],
    ],
)
def test_dpo_loss_type_variants_train(tiny_model_dir, tmp_path, flags):
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, "dpo", "--train_type", "full", *flags) == 0
    assert all(math.isfinite(r["loss"]) for r in records(out) if "loss" in r)
    assert_trained(tiny_model_dir, out, "full")


# ------------------------------------------------------------------ step-1 identities


def first_step(tiny_model_dir, tmp_path, rlhf_type, *flags, batch_size=1):
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, rlhf_type, *flags, batch_size=batch_size, steps=1) == 0
    return records(out)[0]


def test_dpo_mix_at_step_one_is_weighted_sum_of_step_zero_values(tiny_model_dir, tmp_path):
    # Policy = reference: sigmoid = ln 2, bco_pair = 2 ln 2 (the running mean δ starts at the batch's 0
    # rewards), sft = the chosen NLL.
    first = first_step(tiny_model_dir, tmp_path, "dpo", "--loss_type", "sigmoid", "bco_pair", "sft",
                       "--loss_weights", "0.8", "0.2", "1.0", batch_size=2)
    assert first["loss"] == pytest.approx(0.8 * math.log(2) + 0.2 * 2 * math.log(2) + first["nll_loss"], abs=1e-5)


def test_dpo_ipo_with_ld_alpha_at_step_one(tiny_model_dir, tmp_path):
    first = first_step(tiny_model_dir, tmp_path, "dpo", "--loss_type", "ipo", "--ld_alpha", "0.3", "--beta", "0.5")
    assert first["loss"] == pytest.approx(1 / (4 * 0.5**2), abs=1e-5)


def test_cpo_step_one_is_sigmoid_of_the_logp_gap_plus_nll(tiny_model_dir, tmp_path):
    first = first_step(tiny_model_dir, tmp_path, "cpo", "--beta", "0.2", "--cpo_alpha", "0.5")
    gap = first["logps/chosen"] - first["logps/rejected"]
    expected = -F.logsigmoid(torch.tensor(0.2 * gap)).item() + 0.5 * first["nll_loss"]
    assert first["loss"] == pytest.approx(expected, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0.2 * first["logps/chosen"], rel=1e-5)


def test_simpo_uses_averaged_logps_gamma_and_default_beta(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        first = first_step(tiny_model_dir, tmp_path, "simpo", "--simpo_gamma", "0.7", "--cpo_alpha", "0")
    assert "--beta not set: using simpo's default 2.0" in caplog.text
    # Averaged log-probs are -NLL per token for one pair.
    assert first["logps/chosen"] == pytest.approx(-first["nll_loss"], rel=1e-5)
    expected = -F.logsigmoid(torch.tensor(2.0 * (first["logps/chosen"] - first["logps/rejected"]) - 0.7)).item()
    assert first["loss"] == pytest.approx(expected, abs=1e-4)


def test_orpo_step_one_is_nll_minus_beta_log_odds_ratio(tiny_model_dir, tmp_path):
    first = first_step(tiny_model_dir, tmp_path, "orpo", "--beta", "0.25")
    assert first["loss"] == pytest.approx(first["nll_loss"] - 0.25 * first["log_odds_ratio"], abs=1e-5)


@pytest.mark.parametrize("loss_type", ["log_sig", "log_exp"])
def test_rm_step_one_is_bradley_terry_of_the_margin(tiny_model_dir, tmp_path, loss_type):
    first = first_step(tiny_model_dir, tmp_path, "rm", "--loss_type", loss_type)
    assert first["margin"] == pytest.approx(first["rewards/chosen"] - first["rewards/rejected"], abs=1e-6)
    assert first["loss"] == pytest.approx(F.softplus(torch.tensor(-first["margin"])).item(), abs=1e-5)


def test_kto_step_one_loss_is_half_and_kl_zero(tiny_model_dir, tmp_path):
    first = first_step(tiny_model_dir, tmp_path, "kto", batch_size=4)
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)
    assert first["kl"] == 0.0 and first["rewards/chosen"] == 0.0


# ------------------------------------------------------------------ flag checks


@pytest.mark.parametrize(
    "rlhf_type, flags, message",
    [
        ("dpo", ["--loss_type", "nca_pair", "--f_divergence_type", "js_divergence"], "only defined for loss types"),
        ("dpo", ["--loss_type", "exo_pair", "--loss_convention", "trl1"], "exo_pair needs label_smoothing > 0"),
        ("dpo", ["--loss_type", "sigmoid", "hinge", "--loss_weights", "1"], "one weight per loss_type"),
        ("dpo", ["--loss_type", "dpo"], "--loss_type dpo: unknown DPO loss"),
        ("dpo", ["--ld_alpha", "1.5"], "ld_alpha must be in [0, 1]"),
        ("simpo", ["--loss_type", "sigmoid"], "--rlhf_type simpo has a single loss and takes no --loss_type"),
        ("cpo", ["--loss_type", "nca_pair"], "Unknown CPO loss_type 'nca_pair'"),
        ("kto", ["--loss_type", "bco"], "Unknown KTO loss_type 'bco'"),
        ("rm", ["--loss_type", "mse"], "Unknown reward-model loss_type 'mse'"),
        ("orpo", ["--loss_weights", "1"], "--loss_weights mixes --rlhf_type dpo loss types"),
    ],
)
def test_bad_objective_flags_fail_before_loading(tiny_model_dir, tmp_path, capsys, rlhf_type, flags, message):
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, rlhf_type, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ KTO data


def test_kto_needs_two_rows_per_optimizer_step_not_per_micro_batch(tiny_model_dir, tmp_path, capsys):
    assert run(tiny_model_dir, tmp_path / "out", "kto", batch_size=1) == 2
    err = capsys.readouterr().err
    assert "across an optimizer step, which needs at least 2 rows" in err and "(got 1 × 1)" in err
    assert "apo_zero_unpaired" in err
    # One row per micro-batch, accumulated (the seeds' --batch_size 1 --gradient_accumulation_steps 16).
    assert run(tiny_model_dir, tmp_path / "acc", "kto", "--gradient_accumulation_steps", "2", batch_size=1) == 0
    # Without a KL term a single row per step is fine.
    assert run(tiny_model_dir, tmp_path / "ok", "kto", "--loss_type", "apo_zero_unpaired", batch_size=1) == 0


def test_kto_kl_rows_put_completion_i_minus_1_after_prompt_i():
    rows = [  # prompt tokens are labelled -100, completion tokens are their own labels
        Encoded([1, 2, 10, 11], [-100, -100, 10, 11]),
        Encoded([3, 4, 5, 20], [-100, -100, -100, 20]),
        Encoded([6, 30, 31, 32], [-100, 30, 31, 32]),
    ]
    assert split_prompt(rows[1]) == (Encoded([3, 4, 5], [-100] * 3), Encoded([20], [20]))
    mismatched = kl_rows([(7 + i, EncodedUnpaired(r, i != 1)) for i, r in enumerate(rows)])
    assert [row_id for row_id, _ in mismatched] == [7, 8, 9]
    batch = UnpairedCollator(0)(mismatched)
    assert batch.desirable.tolist() == [True, False, True]
    kl = batch.completions
    kl_ids = [ids[mask.bool()].tolist() for ids, mask in zip(kl.input_ids, kl.attention_mask)]
    assert kl_ids == [[1, 2, 30, 31, 32], [3, 4, 5, 10, 11], [6, 20]]
    kl_labels = [labels[labels != -100].tolist() for labels in kl.labels]
    assert kl_labels == [[30, 31, 32], [10, 11], [20]]


def test_kto_ratio_warning_and_lone_row_drop(caplog):
    from alignkit.algorithms.kto import check_kto_data, check_kto_steps

    with caplog.at_level(logging.WARNING, logger="alignkit"):
        check_kto_data([True] * 4 + [False] * 4, desirable_weight=1.0, undesirable_weight=1.0)  # ratio 1
        check_kto_data([True] * 5 + [False] * 4, desirable_weight=1.0, undesirable_weight=1.0)  # 1.25
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        check_kto_data([True] * 2 + [False] * 6, desirable_weight=1.0, undesirable_weight=1.0)
    assert "= 0.333 is outside [1, 4/3]" in caplog.text and "--desirable_weight in [3.000, 4.000]" in caplog.text
    # 17 rows in steps of 16 (batch 1 × accumulation 16): the second step would hold one row.
    assert len(check_kto_steps(list(range(17)), 16, "training")) == 16
    assert len(check_kto_steps(list(range(18)), 16, "training")) == 18
    with pytest.raises(Exception, match="at least 2 held-out rows"):
        check_kto_steps([0], 1, "held-out")


# ------------------------------------------------------------------ reward model


def test_value_head_init_is_normal_with_variance_one_over_d_plus_one():
    from alignkit.models.reward_model import new_value_head

    torch.manual_seed(0)
    weight = new_value_head(4095).weight  # (1, 4095)
    assert weight.shape == (1, 4095) and new_value_head(4095).bias is None
    assert weight.std().item() == pytest.approx(1 / 64, rel=0.05)
    assert abs(weight.mean().item()) < 3 / 64 / math.sqrt(4095)


@pytest.mark.parametrize("train_type", ["lora", "full"])
def test_reward_model_scores_after_save_and_load_equal_training_rewards(tiny_model_dir, tmp_path, train_type):
    from alignkit.models.reward_model import load_reward_model

    prompt = [{"role": "user", "content": "What is 12 + 30? Reply with 'Answer: <number>'."}]
    chosen, rejected = (
        [{"role": "assistant", "content": "Answer: 42"}],
        [{"role": "assistant", "content": "Answer: 41"}],
    )
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    out = tmp_path / "out"
    assert main([
        "rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#8",
        "--val_dataset", str(val), "--max_steps", "2", "--batch_size", "2",
        "--learning_rate", "1e-2", "--train_type", train_type, "--output_dir", str(out), "--dtype", "fp32",
        "--report_to", "none",
    ]) == 0
    final_eval = records(out)[-1]
    checkpoint = last_checkpoint(out)
    assert (checkpoint / ("adapter_model.safetensors" if train_type == "lora" else "model.safetensors")).is_file()
    scorer = load_reward_model(str(checkpoint))  # a LoRA checkpoint names its base model
    scores = scorer.score([prompt + chosen, prompt + rejected])
    assert scores[0] == pytest.approx(final_eval["eval_rewards/chosen"], abs=1e-5)
    assert scores[1] == pytest.approx(final_eval["eval_rewards/rejected"], abs=1e-5)


def test_infer_reward_model_writes_scores_and_pair_accuracy(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, "rm") == 0
    checkpoint = str(last_checkpoint(out))
    pairs_path, convs_path = tmp_path / "pairs.jsonl", tmp_path / "convs.jsonl"
    assert main(["infer", "--reward_model", checkpoint, "--model", tiny_model_dir, "--val_dataset",
                 "arith-pref:test#5", "--result_path", str(pairs_path), "--dtype", "fp32"]) == 0
    assert "pair accuracy (reward of chosen > rejected):" in capsys.readouterr().out
    scored = [json.loads(line) for line in pairs_path.read_text().splitlines()]
    assert len(scored) == 5 and all(isinstance(r["chosen_reward"], float) for r in scored)
    assert main(["infer", "--reward_model", checkpoint, "--model", tiny_model_dir, "--val_dataset",
                 "arith-sft:test#3", "--result_path", str(convs_path), "--dtype", "fp32"]) == 0
    conversations = [json.loads(line) for line in convs_path.read_text().splitlines()]
    assert len(conversations) == 3 and all(math.isfinite(r["reward"]) for r in conversations)
    # The same conversation scores the same whether it came as a pair or alone.
    first_pair = scored[0]
    from alignkit.models.reward_model import load_reward_model

    again = load_reward_model(checkpoint, model=tiny_model_dir).score([first_pair["messages"] + first_pair["chosen"]])
    assert again[0] == pytest.approx(first_pair["chosen_reward"], abs=1e-6)


def test_reward_model_checkpoint_without_head_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["infer", "--reward_model", tiny_model_dir, "--val_dataset", "arith-sft:test#1",
                 "--result_path", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err  # a causal LM is neither an rm checkpoint nor a one-label classifier
    assert "expected an `alignkit rlhf --rlhf_type rm` checkpoint (value_head.safetensors" in err
    assert "its architectures are ['LlamaForCausalLM']" in err


def test_reward_model_resume_restores_the_head(tiny_model_dir, tmp_path):
    common = ["rlhf", "--rlhf_type", "rm", "--model", tiny_model_dir, "--dataset", "arith-pref#8",
              "--val_dataset", "arith-pref:test#1", "--batch_size", "2", "--max_steps", "3", "--save_steps", "1",
              "--learning_rate", "1e-2", "--dtype", "fp32", "--report_to", "none"]
    assert main([*common, "--output_dir", str(tmp_path / "a")]) == 0
    full_run = run_dir_of(tmp_path / "a")
    assert main([*common, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(full_run / "checkpoint-1")]) == 0
    resumed = run_dir_of(tmp_path / "b")
    for name in ("value_head.safetensors", "adapter_model.safetensors"):
        a, b = load_file(full_run / "checkpoint-3" / name), load_file(resumed / "checkpoint-3" / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_bco_running_mean_averages_training_batch_means_only():
    from alignkit.algorithms.dpo import RunningRewardMean

    running = RunningRewardMean()
    assert running.update(torch.tensor([1.0, 3.0]), training=True).item() == 2.0  # shifted by its own mean
    assert running.update(torch.tensor([5.0]), training=True).item() == 3.5
    assert running.update(torch.tensor([100.0]), training=False).item() == 3.5  # evaluation reads only
