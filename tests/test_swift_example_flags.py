"""Flags of ms-swift's own example scripts (examples/train/...): what they mean here, or the refusal naming what
alignkit does not train."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.config.checks import check_run_arguments
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError


@pytest.mark.parametrize("task, loss", [
    ("reranker", "pointwise_reranker"), ("reranker", "listwise_reranker"),
    ("generative_reranker", "pointwise_reranker"), ("embedding", "infonce"),
])
def test_a_reranker_or_embedding_run_passes_the_flag_checks_with_its_own_loss(task, loss):
    # ms-swift's examples/train/reranker/*.sh and embedding/*.sh: `swift sft --task_type X --loss_type Y`, trained
    # since alignkit/algorithms/embedding.py and reranker.py (tests/test_retrieval.py runs them and checks that a
    # loss of another task is refused).
    check_run_arguments(RunArguments(task_type=task, loss_type=[loss]), "sft")


def test_sft_takes_cross_entropy_and_refuses_other_loss_types_saying_whose_they_are():
    check_run_arguments(RunArguments(loss_type=["cross_entropy"]), "sft")
    check_run_arguments(RunArguments(loss_type=["loss_scale"]), "sft")  # tests/test_sft_loss_options.py
    with pytest.raises(AlignkitError, match="--loss_type infonce: sft trains with cross_entropy"):
        check_run_arguments(RunArguments(loss_type=["infonce"]), "sft")
    # The method decides, not --rlhf_type's default (dpo): sft's loss types are not checked as DPO's.
    with pytest.raises(AlignkitError, match="unknown DPO loss"):
        check_run_arguments(RunArguments(loss_type=["cross_entropy"]), "dpo")


def test_save_total_limit_minus_one_keeps_every_checkpoint(tiny_model_dir, tmp_path):
    # examples/megatron/benchmark/deepspeed.sh: --save_total_limit -1 (transformers: no rotation).
    data = tmp_path / "sft.jsonl"
    row = {"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}
    data.write_text((json.dumps(row) + "\n") * 4)
    out = tmp_path / "out"
    assert main(["sft", "--model", tiny_model_dir, "--dataset", str(data), "--output_dir", str(out), "--max_steps",
                 "3", "--save_steps", "1", "--save_total_limit", "-1", "--report_to", "none",
                 "--split_dataset_ratio", "0"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("args, message", [
    # examples/train/tuners/unsloth/train.sh (plugins/tuner_phi4_mm.sh's --tuner_type dummy trains:
    # tests/test_layer_tuners.py)
    (RunArguments(tuner_backend="unsloth"), "--tuner_backend unsloth: Unsloth's patched models and kernels are not "
                                            "supported"),
])
def test_ms_swift_tuner_plugins_stop_naming_what_is_missing(args, message):
    with pytest.raises(AlignkitError, match=message):
        check_run_arguments(args, "sft")


@pytest.mark.parametrize("flags, message", [
    # examples/eval/train_eval/train.sh (--predict_with_generate trains: tests/test_predict_with_generate.py)
    (["--eval_use_evalscope", "--eval_dataset", "gsm8k"], "--eval_use_evalscope is not supported by alignkit: "
                                                          "EvalScope benchmarks during training"),
])
def test_evaluation_by_generation_during_training_is_refused_before_anything_runs(flags, message, tmp_path, capsys):
    assert main(["sft", *flags, "--output_dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
