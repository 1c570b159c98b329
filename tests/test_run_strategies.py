"""When a run logs, evaluates, saves and stops (transformers' and ms-swift's --*_strategy, --save_only_model,
--metric_for_best_model, --early_stop_interval, --max_epochs) and the order it visits its rows
(--dataloader_drop_last, --group_by_length), through the shared Runner, on tiny DPO, SFT and GRPO runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_resume import PAIRS, assert_bit_identical, checkpoint_names, log_records, only_run_dir

from alignkit.cli import main
from alignkit.data.order import DataOrder, epoch_batches, length_grouped_order

# 8 pairs in micro-batches of 2: 4 steps per epoch.


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:4]))
    (root / "seven.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:7]))
    return root


def dpo(model: str, data: Path, out: Path, *extra: str, val: bool = True) -> list[str]:
    return ["rlhf", "--model", model, "--dataset", str(data / "pairs.jsonl"), "--output_dir", str(out),
            "--dtype", "fp32", "--report_to", "none", "--learning_rate", "1e-2", "--batch_size", "2",
            "--lora_dropout", "0", *(["--val_dataset", str(data / "val.jsonl")] if val else []), *extra]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in log_records(run_dir) if "loss" in r]


def eval_records(run_dir: Path) -> list[dict]:
    return [r for r in log_records(run_dir) if "eval_loss" in r]


def state_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


# ------------------------------------------------------------------------------ --save_only_model


@pytest.mark.parametrize("train_type", ["lora", "full"])
def test_save_only_model_writes_weights_only_and_resume_says_why_it_cannot_continue(
        tiny_model_dir, data, tmp_path, capsys, train_type):
    out = tmp_path / "out"
    argv = dpo(tiny_model_dir, data, out, "--train_type", train_type, "--max_steps", "2", "--save_steps", "1",
               "--save_only_model", "true", val=False)
    assert main(argv) == 0
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-1", "checkpoint-2"]
    checkpoint = run_dir / "checkpoint-2"
    names = {p.name for p in checkpoint.iterdir()}
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pt"}
    weights = "adapter_model.safetensors" if train_type == "lora" else "model.safetensors"
    assert weights in names and "tokenizer_config.json" in names
    assert state_of(checkpoint)["save_only_model"] is True

    capsys.readouterr()
    for spec in ("last", str(checkpoint)):
        assert main([*argv, "--resume_from_checkpoint", spec]) == 2
        err = capsys.readouterr().err
        assert f"{checkpoint} was saved with --save_only_model" in err
        assert "no optimizer, learning-rate schedule or RNG state, so the run cannot continue exactly" in err
        flag = "--adapters" if train_type == "lora" else "--model"
        assert f"start a new run with {flag} {checkpoint}" in err
    # The suggested command works: a new run from the saved weights.
    follow = dpo(tiny_model_dir if train_type == "lora" else str(checkpoint), data, tmp_path / "next",
                 "--train_type", train_type, "--max_steps", "1", val=False)
    assert main([*follow, *(["--adapters", str(checkpoint)] if train_type == "lora" else [])]) == 0


def test_save_only_model_holds_for_the_online_loop(tiny_model_dir, tmp_path, capsys):
    from test_online_cli import PLUGIN
    from test_resume import ONLINE

    plugin = tmp_path / "rewards.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "out"
    argv = ["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--output_dir", str(out), *ONLINE,
            "--num_generations", "2", "--external_plugins", str(plugin), "--reward_funcs", "length_reward",
            "--max_steps", "2", "--save_only_model", "true"]
    assert main(argv) == 0
    checkpoint = only_run_dir(out) / "checkpoint-2"
    assert not (checkpoint / "optimizer.pt").exists() and (checkpoint / "adapter_model.safetensors").exists()
    capsys.readouterr()
    assert main([*argv, "--resume_from_checkpoint", "last"]) == 2
    assert "was saved with --save_only_model" in capsys.readouterr().err


# ------------------------------------------------------------------------------ strategies


def test_epoch_strategies_log_evaluate_and_save_at_each_epoch_end(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--num_train_epochs", "2", "--save_strategy", "epoch",
                    "--evaluation_strategy", "epoch", "--logging_strategy", "epoch",
                    "--logging_first_step", "false")) == 0
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-4", "checkpoint-8"]
    assert [r["step"] for r in eval_records(run_dir)] == [4, 8]
    assert [r["step"] for r in train_records(run_dir)] == [4, 8]
    # An epoch's log is the mean over its 4 steps: the first epoch's mean is not step 4's own loss.
    each = tmp_path / "each"
    assert main(dpo(tiny_model_dir, data, each, "--num_train_epochs", "2", "--logging_steps", "1", val=False)) == 0
    steps = [r["loss"] for r in train_records(only_run_dir(each))]
    assert train_records(run_dir)[0]["loss"] == pytest.approx(sum(steps[:4]) / 4, rel=1e-6)
    assert train_records(run_dir)[0]["loss"] != pytest.approx(steps[3], rel=1e-6)


def test_steps_strategies_with_first_step_and_eval_steps_following_save_steps(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "5", "--save_steps", "2",
                    "--logging_steps", "3")) == 0
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]  # the last always
    assert [r["step"] for r in eval_records(run_dir)] == [2, 4, 5]  # --eval_steps unset: --save_steps
    assert [r["step"] for r in train_records(run_dir)] == [1, 3, 5]  # --logging_first_step is ms-swift's default


def test_strategy_no_saves_evaluates_and_logs_nothing(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "no",
                    "--logging_strategy", "no", "--logging_first_step", "false")) == 0
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == []
    assert not (run_dir / "logging.jsonl").exists()
    assert "last checkpoint: None" in capsys.readouterr().out


def test_save_strategy_no_with_a_signal_saves_nothing_and_says_so(tiny_model_dir, data, tmp_path):
    from test_resume import run_child

    out, log = tmp_path / "out", tmp_path / "child.log"
    argv = dpo(tiny_model_dir, data, out, "--max_steps", "4", "--save_strategy", "no", val=False)
    assert run_child(argv, log, "TERM@micro_batch:2") == 143
    assert checkpoint_names(only_run_dir(out)) == []
    assert "stopped by SIGTERM; no checkpoint saved (--save_strategy no)" in log.read_text()


# ------------------------------------------------------------------------------ best checkpoint, early stop


@pytest.mark.parametrize("limit", [2, 1])
def test_the_best_checkpoint_is_recorded_and_never_rotated_away(tiny_model_dir, data, tmp_path, caplog, limit):
    # loss with greater_is_better: the best is the worst loss, the first evaluation as the loss falls, so it
    # is never the newest checkpoint and rotation would otherwise delete it.
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="alignkit")
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "5", "--save_steps", "1",
                    "--metric_for_best_model", "loss", "--greater_is_better", "true",
                    "--save_total_limit", str(limit))) == 0
    run_dir = only_run_dir(out)
    values = [(r["step"], r["eval_loss"]) for r in eval_records(run_dir)]
    best, best_value = max(values, key=lambda sv: (sv[1], -sv[0]))
    assert best < 5, values  # the test needs a best that is not the last checkpoint
    kept = checkpoint_names(run_dir)
    # transformers: rotation keeps the newest and the best; at the end a limit of 1 keeps the best alone.
    assert kept == ([f"checkpoint-{best}", "checkpoint-5"] if limit == 2 else [f"checkpoint-{best}"])
    state = state_of(run_dir / kept[-1])
    assert state["best_model_checkpoint"] == str(run_dir / f"checkpoint-{best}")
    assert state["best_metric"] == pytest.approx(best_value, rel=1e-6)
    assert f"best checkpoint: {run_dir / f'checkpoint-{best}'} (eval_loss {state['best_metric']})" in caplog.text


def test_default_metric_is_eval_loss_lower_is_better(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "4", "--save_steps", "2")) == 0
    run_dir = only_run_dir(out)
    losses = {r["step"]: r["eval_loss"] for r in eval_records(run_dir)}
    best = min(losses, key=lambda s: (losses[s], s))
    assert state_of(run_dir / "checkpoint-4")["best_model_checkpoint"] == str(run_dir / f"checkpoint-{best}")


def test_save_strategy_best_saves_only_improvements_and_metric_names_are_checked(tiny_model_dir, data, tmp_path,
                                                                                  capsys):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "4", "--save_strategy", "best", "--eval_steps", "1",
                    "--metric_for_best_model", "rewards/accuracies")) == 0
    run_dir = only_run_dir(out)
    improved, best = [], None
    for record in eval_records(run_dir):
        if best is None or record["eval_rewards/accuracies"] > best:
            best = record["eval_rewards/accuracies"]
            improved.append(record["step"])
    assert checkpoint_names(run_dir) == sorted({f"checkpoint-{s}" for s in [*improved, 4]},
                                               key=lambda n: int(n.split("-")[1]))
    capsys.readouterr()
    assert main(dpo(tiny_model_dir, data, tmp_path / "bad", "--max_steps", "1",
                    "--metric_for_best_model", "rouge-l")) == 2
    err = capsys.readouterr().err
    assert "--metric_for_best_model rouge-l: the evaluation has no eval_rouge-l; it reports eval_logps/chosen" in err
    assert "eval_loss, " in err and "Choose one of them" in err


def test_load_best_model_at_end_leaves_the_best_checkpoints_weights_in_the_model(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from test_nonfinite import Poisoned

    from alignkit.data.builtin import BUILTIN_DATASETS
    from alignkit.data.collate import SequenceCollator
    from alignkit.data.template import ChatEncoder
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.training.loop import train
    from alignkit.training.runner import LoopConfig

    tokenizer = load_tokenizer(tiny_model_dir)
    encoder = ChatEncoder(tokenizer, max_length=256)
    rows = [(i, encoder.encode_conversation(row))
            for i, row in enumerate(BUILTIN_DATASETS["arith-sft"]("train", data_seed=0)[:6])]
    model = load_causal_lm(tiny_model_dir)
    # The worst loss is the best here: the first evaluation, so the best is not the last checkpoint.
    config = LoopConfig(batch_size=2, max_steps=3, learning_rate=1e-2, save_steps=1, eval_steps=1,
                        metric_for_best_model="eval_loss", greater_is_better=True, load_best_model_at_end=True)
    last = train(model=model, tokenizer=tokenizer, algorithm=Poisoned(), train_rows=rows[:4], val_rows=rows[4:],
                 collate=SequenceCollator(tokenizer.pad_token_id), config=config, run_dir=tmp_path,
                 args_for_checkpoint={})
    best = Path(json.loads((last / "trainer_state.json").read_text())["best_model_checkpoint"])
    assert best != last
    saved, final = load_file(best / "model.safetensors"), load_file(last / "model.safetensors")
    weights = model.state_dict()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    assert not all(torch.equal(weights[k], final[k]) for k in final)


def test_early_stop_interval_stops_after_that_many_saves_without_improvement(tiny_model_dir, data, tmp_path):
    out = tmp_path / "out"
    assert main(dpo(tiny_model_dir, data, out, "--max_steps", "8", "--save_steps", "1",
                    "--metric_for_best_model", "loss", "--greater_is_better", "true",
                    "--early_stop_interval", "2")) == 0
    run_dir = only_run_dir(out)
    # ms-swift's EarlyStopCallback over the logged evaluations: count saves whose best did not improve.
    best = remembered = None
    count, expected = 0, None
    for record in eval_records(run_dir):
        best = record["eval_loss"] if best is None else max(best, record["eval_loss"])
        if remembered is None or best > remembered:
            remembered, count = best, 0
        else:
            count += 1
        if count >= 2:
            expected = record["step"]
            break
    assert expected is not None and expected < 8
    assert log_records(run_dir)[-1]["step"] == expected
    assert checkpoint_names(run_dir)[-1] == f"checkpoint-{expected}"


def test_flags_that_need_an_evaluation_refuse_to_run_without_one(tiny_model_dir, data, tmp_path, capsys):
    for extra, message in (
        (["--early_stop_interval", "2"], "--early_stop_interval picks checkpoints by an evaluation metric"),
        (["--load_best_model_at_end", "true", "--eval_strategy", "epoch"], None),
        (["--lr_scheduler_type", "reduce_lr_on_plateau"], "reduce_lr_on_plateau lowers the learning rate"),
    ):
        val = extra[0] == "--load_best_model_at_end"
        assert main(dpo(tiny_model_dir, data, tmp_path / "out", *extra, val=val)) == 2
        err = capsys.readouterr().err
        assert (message or "--load_best_model_at_end needs --eval_strategy and --save_strategy to match") in err
    assert not (tmp_path / "out").exists()  # stopped before a run directory was made


# ------------------------------------------------------------------------------ --max_epochs


def test_max_epochs_stops_at_that_epochs_end_with_the_schedule_of_the_full_run(tiny_model_dir, data, tmp_path):
    full, capped = tmp_path / "full", tmp_path / "capped"
    common = ["--num_train_epochs", "3", "--logging_steps", "1", "--save_steps", "100"]
    assert main(dpo(tiny_model_dir, data, full, *common, val=False)) == 0
    assert main(dpo(tiny_model_dir, data, capped, *common, "--max_epochs", "1", "--max_steps", "10",
                    val=False)) == 0
    run_dir = only_run_dir(capped)
    assert checkpoint_names(run_dir) == ["checkpoint-4"]  # stopped, evaluated and saved at the end of epoch 1
    capped_lrs = [r["learning_rate"] for r in train_records(run_dir)]
    # --max_steps 10 is the schedule's length: the learning rate at step 4 is a 10-step cosine's, not 4's.
    assert capped_lrs[-1] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 3 / 10)))
    assert len(capped_lrs) == 4 and len(train_records(only_run_dir(full))) == 12


# ------------------------------------------------------------------------------ data order


def test_drop_last_drops_the_short_micro_batch_and_changes_steps_per_epoch(tiny_model_dir, data, tmp_path):
    assert epoch_batches(7, 2, seed=0, epoch=0, shuffle=True, drop_last=True) == \
        epoch_batches(7, 2, seed=0, epoch=0, shuffle=True)[:3]
    for drop, steps in (("false", 4), ("true", 3)):
        out = tmp_path / drop
        assert main(["rlhf", "--model", tiny_model_dir, "--dataset", str(data / "seven.jsonl"), "--output_dir",
                     str(out), "--dtype", "fp32", "--report_to", "none", "--batch_size", "2", "--logging_steps", "1",
                     "--dataloader_drop_last", drop]) == 0
        assert checkpoint_names(only_run_dir(out)) == [f"checkpoint-{steps}"]


def test_length_grouped_order_is_transformers_and_seeded_per_epoch():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [int(x) for x in torch.randint(5, 200, (103,), generator=torch.Generator().manual_seed(1))]
    for batch, epoch in ((4, 0), (4, 1), (1, 0), (50, 2)):
        ours = length_grouped_order(lengths, batch, torch.Generator().manual_seed(42 + epoch))
        theirs = get_length_grouped_indices(lengths, batch, generator=torch.Generator().manual_seed(42 + epoch))
        assert ours == theirs
    order = DataOrder(103, 4, seed=42, lengths=tuple(lengths))
    assert order.epoch(0) != order.epoch(1)
    first = order.epoch(0)
    assert lengths[first[0][0]] == max(lengths)  # the longest row first: an out-of-memory shows at once
    # Within a mega-batch (min(103 // 16, 50) = 6 micro-batches), rows come longest first.
    flat = [i for b in first for i in b]
    assert [lengths[i] for i in flat[1:24]] == sorted((lengths[i] for i in flat[1:24]), reverse=True)


def test_group_by_length_runs_and_resumes_bit_identically(tiny_model_dir, tmp_path):
    argv = ["sft", "--model", tiny_model_dir, "--dataset", "arith-sft#12", "--dtype", "fp32", "--report_to", "none",
            "--batch_size", "2", "--num_train_epochs", "2", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--group_by_length", "true", "--lora_dropout", "0"]  # 6 steps per epoch
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--save_steps", "4"]) == 0
    baseline = only_run_dir(tmp_path / "a")
    assert main([*argv, "--output_dir", str(tmp_path / "b"), "--save_steps", "4",
                 "--resume_from_checkpoint", str(baseline / "checkpoint-4")]) == 0
    resumed = only_run_dir(tmp_path / "b")
    assert_bit_identical(baseline / "checkpoint-12", resumed / "checkpoint-12")
    assert log_records(resumed) == log_records(baseline)


def test_the_loop_visits_rows_in_the_length_grouped_order(tiny_model_dir, tmp_path):
    from test_nonfinite import Poisoned

    from alignkit.data.builtin import BUILTIN_DATASETS
    from alignkit.data.collate import SequenceCollator
    from alignkit.data.template import ChatEncoder
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.training.loop import train
    from alignkit.training.runner import LoopConfig

    tokenizer = load_tokenizer(tiny_model_dir)
    encoder = ChatEncoder(tokenizer, max_length=256)
    rows = [(i, encoder.encode_conversation(row))
            for i, row in enumerate(BUILTIN_DATASETS["arith-sft"]("train", data_seed=0)[:8])]
    algorithm = Poisoned()  # plain SFT that records the rows of each micro-batch
    train(model=load_causal_lm(tiny_model_dir), tokenizer=tokenizer, algorithm=algorithm, train_rows=rows,
          val_rows=[], collate=SequenceCollator(tokenizer.pad_token_id), run_dir=tmp_path, args_for_checkpoint={},
          config=LoopConfig(batch_size=2, num_train_epochs=2, group_by_length=True, save_strategy="no"))
    lengths = tuple(len(encoded.input_ids) for _, encoded in rows)
    expected = [b for epoch in range(2) for b in DataOrder(8, 2, seed=42, lengths=lengths).epoch(epoch)]
    plain = [b for epoch in range(2) for b in epoch_batches(8, 2, seed=42, epoch=epoch, shuffle=True)]
    assert algorithm.seen == expected and expected != plain
    for epoch in range(2):  # each epoch starts with its longest row: an out-of-memory shows at once
        assert lengths[expected[4 * epoch][0]] == max(lengths)
