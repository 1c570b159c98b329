"""What the training code derives from a flag's own declaration (alignkit/config/run.py): the
"has no effect" warning from ``applies_to``, the resume policy from ``may_differ_on_resume``."""

from __future__ import annotations

import dataclasses
import logging

from alignkit.cli import main
from alignkit.config import RunArguments
from alignkit.config.checks import warn_flags_without_effect
from alignkit.training.resume import MAY_DIFFER


def test_a_flag_set_for_a_method_it_does_not_serve_says_so_once(caplog):
    caplog.set_level(logging.WARNING, logger="alignkit")
    args = RunArguments(rlhf_type="rm", beta=0.2, num_generations=4, kl_coef=0.1, center_rewards_coefficient=0.01)
    assert warn_flags_without_effect(args, "rm") == ["beta", "kl_coef", "num_generations"]
    assert "--beta has no effect on --rlhf_type rm (it serves dpo, cpo, simpo, orpo, kto, grpo, gkd)" in caplog.text
    assert "center_rewards_coefficient" not in caplog.text  # rm's own flag
    assert warn_flags_without_effect(RunArguments(learning_rate=1e-3, beta=0.3), "sft") == ["beta"]


def test_flags_left_at_their_defaults_or_serving_the_method_are_silent():
    assert warn_flags_without_effect(RunArguments(), "dpo") == []
    assert warn_flags_without_effect(RunArguments(), "sft") == []
    grpo = RunArguments(rlhf_type="grpo", beta=0.0, num_generations=4, reward_funcs=["accuracy"], temperature=0.7)
    assert warn_flags_without_effect(grpo, "grpo") == []
    assert warn_flags_without_effect(RunArguments(simpo_gamma=0.5, cpo_alpha=0.0), "cpo") == []  # cpo --loss_type simpo


def test_every_method_specific_flag_declares_the_methods_its_help_names():
    methods = {"sft", "dpo", "cpo", "simpo", "orpo", "kto", "rm", "ppo", "grpo", "gkd"}
    for f in dataclasses.fields(RunArguments):
        serves = f.metadata.get("applies_to")
        first_word = f.metadata["help"].split(":")[0].split(" (")[0]
        named = {w.strip() for w in first_word.split(",")}
        if named <= methods and ":" in f.metadata["help"]:
            assert serves is not None and named <= set(serves), f"--{f.name} ({f.metadata['help'][:40]}...)"
        if serves is not None:
            assert set(serves) <= methods, f.name


def test_the_resume_policy_comes_from_the_flags():
    assert {
        "output_dir",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "report_to",
        "gradient_checkpointing",
    } <= MAY_DIFFER
    assert not {"learning_rate", "seed", "dataset", "per_device_train_batch_size", "beta", "model"} & MAY_DIFFER


def test_the_cli_warns_before_training(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="alignkit")
    assert main(["rlhf", "--rlhf_type", "orpo", "--model", tiny_model_dir, "--dataset", "arith-pref#4",
                 "--max_steps", "1", "--num_generations", "4", "--output_dir", str(tmp_path), "--report_to", "none",
                 "--dtype", "fp32"]) == 0
    assert "--num_generations has no effect on --rlhf_type orpo (it serves grpo)" in caplog.text


def test_one_defaults_table_fills_unset_flags_per_method_and_says_so(caplog):
    from alignkit.config.defaults import resolve

    caplog.set_level(logging.INFO, logger="alignkit")
    causal = {"task_type": "causal_lm", "disable_dropout": True}
    assert resolve(RunArguments(), "simpo") == {"beta": 2.0, "loss_type": [], "dataset": ["arith-pref"], **causal}
    assert "--beta not set: using simpo's default 2.0 (alignkit/config/defaults.py)" in caplog.text
    grpo = resolve(RunArguments(rlhf_type="grpo", epsilon=0.3), "grpo")
    assert grpo == {"beta": 0.04, "loss_type": ["grpo"], "dataset": ["arith-prompts"], "epsilon_high": 0.3,
                    "scale_rewards": "group", "kl_in_reward": False, **causal}
    # ms-swift ties --scale_rewards and --kl_in_reward to --advantage_estimator; what the user says wins.
    rloo = resolve(RunArguments(rlhf_type="grpo", advantage_estimator="rloo"), "grpo")
    assert (rloo["scale_rewards"], rloo["kl_in_reward"]) == ("none", True)
    assert "--kl_in_reward not set: true for --advantage_estimator rloo (ms-swift's default)" in caplog.text
    said = resolve(RunArguments(rlhf_type="grpo", advantage_estimator="reinforce_plus_plus", scale_rewards="true",
                                kl_in_reward=False), "grpo")
    assert (said["scale_rewards"], said["kl_in_reward"]) == ("group", False)
    said = RunArguments(beta=0.5, loss_type=["ipo"], dataset=["mine.jsonl"], disable_dropout=True)
    caplog.clear()
    assert resolve(said, "dpo") == {"beta": 0.5, "loss_type": ["ipo"], "dataset": ["mine.jsonl"], **causal}
    assert "not set" not in caplog.text  # what the user said is never rewritten
    assert resolve(RunArguments(), "rm")["beta"] is None and resolve(RunArguments(), "sft")["dataset"] == ["arith-sft"]
