"""Every offline path with the speed-ups on (their defaults) against all off: the same per-step and
held-out losses in fp32, and a logged line saying what is on, what is off and why."""

import json
import logging

import pytest
import torch
from test_objectives_e2e import kto_file

from alignkit.cli import main

PLAIN = ["--padding_free", "false", "--prefix_sharing", "false", "--precompute_ref_log_probs", "false"]
ALL_ON = "padding-free packing, prompt-prefix sharing, precomputed reference log-probs"
PACKED = "Speed-ups on: padding-free packing, prompt-prefix sharing, LM head"

CASES = {
    # rlhf_type and flags, what the speed-ups line says
    "dpo-ipo-ld_alpha-full": (["dpo", "--train_type", "full", "--loss_type", "ipo", "--ld_alpha", "0.5"], ALL_ON),
    "dpo-mix-bco-rpo-lora": (["dpo", "--loss_type", "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2",
                              "1.0", "--rpo_alpha", "0.5"], ALL_ON),
    "dpo-reference_free": (["dpo", "--loss_type", "discopop", "--reference_free"],
                           "precomputed reference log-probs (--reference_free)"),
    "cpo": (["cpo", "--train_type", "full"], "precomputed reference log-probs (cpo has no reference model)"),
    "simpo": (["simpo"], PACKED),
    "orpo": (["orpo", "--train_type", "full"], PACKED),
    "kto-full": (["kto", "--train_type", "full"], ALL_ON),
    "kto-apo_zero_unpaired": (["kto", "--loss_type", "apo_zero_unpaired"], ALL_ON),
    "sft": ([], PACKED),
    "rm-full": (["rm", "--train_type", "full"], PACKED),
    "rm-lora-center": (["rm", "--center_rewards_coefficient", "0.1"], PACKED),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(tiny_model_dir, tmp_path, name, flags, *extra) -> list[dict]:
    out = tmp_path / name
    if not flags:  # sft
        head, data = ["sft"], "arith-sft#8"
    else:
        head, data = ["rlhf", "--rlhf_type", *flags], "arith-pref#8"
        if flags[0] == "kto":
            data = kto_file(tmp_path)
    val = data if data.endswith(".jsonl") else data.replace("#8", ":test#4")
    assert (
        main(
            [
                *head,
                "--model",
                tiny_model_dir,
                "--dataset",
                data,
                "--val_dataset",
                val,
                "--max_steps",
                "3",
                "--batch_size",
                "3",
                "--eval_batch_size",
                "2",
                "--logging_steps",
                "1",
                "--learning_rate",
                "1e-2",
                "--lora_dropout",
                "0",
                "--output_dir",
                str(out),
                "--dtype",
                "fp32",
                "--report_to",
                "none",
                *extra,
            ]
        )
        == 0
    )
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", list(CASES))
def test_speedups_give_the_plain_paths_losses(tiny_model_dir, tmp_path, monkeypatch, caplog, case):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    flags, logged = CASES[case]
    plain = run(tiny_model_dir, tmp_path, "plain", flags, *PLAIN)
    with caplog.at_level(logging.INFO, logger="alignkit"):
        fast = run(tiny_model_dir, tmp_path, "fast", flags)
    assert logged in caplog.text
    train = [(r["loss"], f["loss"]) for r, f in zip(plain, fast) if "loss" in r]
    assert len(train) == 3  # steps 2 and 3 run on updated weights (learning rate 1e-2)
    for a, b in train:
        assert b == pytest.approx(a, abs=2e-5)
    assert "eval_loss" in plain[-1]
    assert fast[-1]["eval_loss"] == pytest.approx(plain[-1]["eval_loss"], abs=2e-5)
