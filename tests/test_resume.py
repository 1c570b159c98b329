"""Kill a run (SIGKILL at a chosen or a random point, SIGTERM, Ctrl-C), resume it, and get the
uninterrupted run's weights and logs bit for bit; refuse resumes that would not continue the same run.

Killed runs are separate processes. Most are forked from a server that has already imported torch and
alignkit (multiprocessing's forkserver: the fork happens before any tensor work, so it is safe), which
saves the import time of a fresh interpreter; one test kills a real `python -m alignkit` from outside at
an unpredictable moment. The kill points inside the loop come from ``alignkit.training.faults`` (test-only).
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignkit.cli import main
from alignkit.training.checkpoint import verify_checkpoint
from alignkit.training.faults import ENV as FAULT_ENV

PAIRS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"Answer: {a + b}"},
        ],
        "rejected_response": f"Answer: {a + b + 1}",
    }
    for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20)]
]
# 8 pairs in micro-batches of 2: 4 micro-batches per epoch.
LORA_RUN = ["--train_type", "lora", "--num_train_epochs", "2"]  # 8 steps, 4 per epoch
FULL_ACCUMULATION_RUN = [
    "--train_type",
    "full",
    "--gradient_accumulation_steps",
    "2",
    "--num_train_epochs",
    "3",
]  # 6 steps


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return str(path)


def rlhf(model, data, out, *extra) -> list[str]:
    return ["rlhf", "--model", model, "--dataset", data, "--output_dir", str(out), "--dtype", "fp32",
            "--report_to", "none", "--learning_rate", "1e-2", "--batch_size", "2", "--logging_steps", "1",
            "--lora_dropout", "0.1", *extra]


def _cli_child(argv: list[str], env: dict, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    sys.exit(main(argv))


def run_child(argv: list[str], log: Path, fault: str | None = None) -> int:
    """Run the CLI in a forked child process (see the module docstring); return its exit code (-9: SIGKILL)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["alignkit.cli", "alignkit.training.run"])
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", FAULT_ENV: fault or ""}
    child = context.Process(target=_cli_child, args=(argv, env, str(log)))
    child.start()
    child.join(timeout=300)
    if child.is_alive():  # hung: do not leave it behind
        child.kill()
        child.join()
        pytest.fail(f"the child run did not finish in 300 s; its log: {log}")
    return child.exitcode


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted((p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint-")),
                  key=lambda n: int(n.split("-")[1].split(".")[0]))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    (path,) = [p for p in checkpoint.glob("*.safetensors") if p.name.startswith(("adapter_model", "model"))]
    return load_file(path)


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def log_records(run_dir: Path) -> list[dict]:
    """The logged records without ``step_seconds``, the wall time of each step, which no rerun repeats."""
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in records]


@pytest.fixture(scope="module")
def baselines(tiny_model_dir, pairs_file, tmp_path_factory):
    """Uninterrupted runs, computed once: {name: run directory}."""
    runs = {}
    for name, extra in (("lora", LORA_RUN), ("full", FULL_ACCUMULATION_RUN)):
        out = tmp_path_factory.mktemp(f"baseline-{name}")
        assert main(rlhf(tiny_model_dir, pairs_file, out, *extra, "--save_steps", "100")) == 0
        runs[name] = only_run_dir(out)
    return runs


def resume_and_compare(argv: list[str], out: Path, baseline: Path, steps: int, spec: str = "last") -> Path:
    assert main([*argv, "--resume_from_checkpoint", spec]) == 0
    run_dir = only_run_dir(out)
    assert_bit_identical(baseline / f"checkpoint-{steps}", run_dir / f"checkpoint-{steps}")
    # Same losses, gradient norms and learning rates at every step: the data order and the accumulation
    # position were restored, not just the final weights.
    assert log_records(run_dir) == log_records(baseline)
    return run_dir


def test_sigkill_in_the_second_epoch_during_gradient_accumulation_resumes_bit_identically(
    tiny_model_dir, pairs_file, baselines, tmp_path
):
    out = tmp_path / "out"
    argv = rlhf(tiny_model_dir, pairs_file, out, *FULL_ACCUMULATION_RUN, "--save_steps", "3")
    # Step 4 is the second epoch's second step; the kill comes after its first of two micro-batches.
    assert run_child(argv, tmp_path / "child.log", "KILL@micro_batch:4") == -signal.SIGKILL
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-3"]
    state = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["batches_done_in_epoch"]) == (3, 1, 2)
    resumed = resume_and_compare(argv, out, baselines["full"], steps=6)
    assert resumed == run_dir  # the run goes on in its own directory
    assert checkpoint_names(run_dir) == ["checkpoint-3", "checkpoint-6"]


def test_sft_resumed_in_the_second_epoch_between_accumulation_groups_matches(tiny_model_dir, tmp_path):
    argv = ["sft", "--model", tiny_model_dir, "--dataset", "arith-sft#6", "--train_type", "lora", "--dtype", "fp32",
            "--report_to", "none", "--batch_size", "1", "--gradient_accumulation_steps", "2", "--num_train_epochs", "2",
            "--learning_rate", "1e-2", "--logging_steps", "1", "--lora_dropout", "0.1"]  # 3 steps per epoch
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--save_steps", "4"]) == 0
    baseline = only_run_dir(tmp_path / "a")
    assert main([*argv, "--output_dir", str(tmp_path / "b"),
                 "--resume_from_checkpoint", str(baseline / "checkpoint-4")]) == 0
    resumed = only_run_dir(tmp_path / "b")  # a new run directory: the baseline's has later checkpoints
    assert_bit_identical(baseline / "checkpoint-6", resumed / "checkpoint-6")
    assert log_records(resumed) == log_records(baseline)


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_which_resume_picks(
    tiny_model_dir, pairs_file, baselines, tmp_path
):
    out = tmp_path / "out"
    argv = rlhf(tiny_model_dir, pairs_file, out, *LORA_RUN, "--save_steps", "2", "--save_total_limit", "1")
    # Killed after checkpoint-6's adapter is written, before its optimizer and state files.
    assert run_child(argv, tmp_path / "child.log", "KILL@checkpoint:6") == -signal.SIGKILL
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-4", "checkpoint-6.tmp"]
    assert verify_checkpoint(run_dir / "checkpoint-4") is None
    assert "incomplete" in verify_checkpoint(run_dir / "checkpoint-6.tmp")

    # Named directly, the partial checkpoint is refused, and the message points at the good one.
    assert main([*argv, "--resume_from_checkpoint", str(run_dir / "checkpoint-6.tmp")]) == 2
    resume_and_compare(argv, out, baselines["lora"], steps=8)
    assert checkpoint_names(run_dir) == ["checkpoint-8"]  # the .tmp was cleared, rotation kept the newest


@pytest.mark.parametrize("signal_name", ["TERM", "INT"])
def test_sigterm_and_ctrl_c_finish_the_step_save_and_exit_cleanly(
    tiny_model_dir, pairs_file, baselines, tmp_path, signal_name
):
    out = tmp_path / "out"
    argv = rlhf(tiny_model_dir, pairs_file, out, *LORA_RUN, "--save_steps", "100")
    log = tmp_path / "child.log"
    # The signal arrives in the middle of step 3; the step is finished, saved, and the run exits.
    code = run_child(argv, log, f"{signal_name}@micro_batch:3")
    signum = getattr(signal, f"SIG{signal_name}")
    assert code == 128 + signum
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-3"]
    text = log.read_text()
    assert (
        f"stopped by SIG{signal_name}; saved {run_dir / 'checkpoint-3'}. Continue with --resume_from_checkpoint" in text
    )
    assert "Traceback" not in text
    if signal_name == "TERM":  # the checkpoint is the same kind either way: resuming one is enough
        resume_and_compare(argv, out, baselines["lora"], steps=8, spec=str(run_dir / "checkpoint-3"))


def test_real_cli_killed_from_outside_at_an_unpredictable_moment_resumes_bit_identically(
    tiny_model_dir, pairs_file, baselines, tmp_path
):
    """`python -m alignkit` gets SIGKILL as soon as its second checkpoint appears: wherever it is by then
    (mid-step, mid-checkpoint), `--resume_from_checkpoint last` finds a complete checkpoint and gets there."""
    out = tmp_path / "out"
    argv = rlhf(tiny_model_dir, pairs_file, out, *LORA_RUN, "--save_steps", "1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(FAULT_ENV, None)
    with open(tmp_path / "child.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "alignkit", *argv], stdout=log, stderr=log, env=env,
                                   cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 300
    while not list(out.glob("*/checkpoint-2")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if process.poll() is not None or time.monotonic() >= deadline:
        process.kill()
        pytest.fail("the run ended (or never wrote checkpoint-2) before it could be killed")
    process.kill()
    assert process.wait() == -signal.SIGKILL
    resume_and_compare(argv, out, baselines["lora"], steps=8)


# ------------------------------------------------------------------ checkpoints that cannot continue the run


@pytest.fixture(scope="module")
def short_run(tiny_model_dir, pairs_file, tmp_path_factory):
    """A finished 4-step LoRA run with checkpoint-2 and checkpoint-4, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("short")
    assert main(rlhf(tiny_model_dir, pairs_file, out, "--max_steps", "4", "--save_steps", "2")) == 0
    return only_run_dir(out)


@pytest.fixture
def copied_run(short_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(short_run, out / short_run.name)
    return out, out / short_run.name


def test_a_truncated_checkpoint_is_named_and_last_falls_back_to_the_previous_one(
    tiny_model_dir, pairs_file, copied_run, capsys
):
    out, run_dir = copied_run
    argv = rlhf(tiny_model_dir, pairs_file, out, "--max_steps", "4", "--save_steps", "2")
    good = {k: v.clone() for k, v in weights(run_dir / "checkpoint-4").items()}  # before the file is cut
    adapter = run_dir / "checkpoint-4" / "adapter_model.safetensors"
    size = adapter.stat().st_size
    adapter.write_bytes(adapter.read_bytes()[: size // 2])

    assert main([*argv, "--resume_from_checkpoint", str(run_dir / "checkpoint-4")]) == 2
    err = capsys.readouterr().err
    assert f"--resume_from_checkpoint {run_dir / 'checkpoint-4'}: adapter_model.safetensors has {size // 2} bytes, " \
           f"but {size} were written; the newest complete checkpoint there is {run_dir / 'checkpoint-2'}" in err

    assert main([*argv, "--resume_from_checkpoint", "last"]) == 0
    # The damaged checkpoint-4 is left alone: the resumed run goes to a new run directory.
    new_run = [p for p in out.iterdir() if p != run_dir]
    assert len(new_run) == 1 and new_run[0].name.startswith("v1-")
    assert json.loads((new_run[0] / "args.json").read_text())["resumed_from"] == str(run_dir / "checkpoint-2")
    resumed = weights(new_run[0] / "checkpoint-4")
    assert all(torch.equal(good[k], resumed[k]) for k in good)
    assert [r["step"] for r in log_records(new_run[0])] == [1, 2, 3, 4]


def test_a_checkpoint_file_that_does_not_parse_is_named(tiny_model_dir, pairs_file, copied_run, capsys):
    out, run_dir = copied_run
    optimizer = run_dir / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(b"\x00" * optimizer.stat().st_size)  # same size: only loading it finds out
    argv = rlhf(tiny_model_dir, pairs_file, out, "--max_steps", "4", "--save_steps", "2")
    assert main([*argv, "--resume_from_checkpoint", str(run_dir / "checkpoint-2")]) == 2
    err = capsys.readouterr().err
    assert f"--resume_from_checkpoint {run_dir / 'checkpoint-2'}: optimizer.pt cannot be loaded" in err
    assert "Traceback" not in err


def test_resuming_with_settings_or_data_that_change_the_run_is_refused_unless_allowed(
    tiny_model_dir, pairs_file, copied_run, tmp_path, capsys
):
    out, run_dir = copied_run
    checkpoint = str(run_dir / "checkpoint-2")
    argv = rlhf(tiny_model_dir, pairs_file, out, "--max_steps", "4", "--save_steps", "2",
                "--resume_from_checkpoint", checkpoint)
    assert main([*argv, "--learning_rate", "1e-3", "--seed", "7", "--logging_steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "this run's settings differ from the checkpoint's" in err
    assert "--learning_rate: 0.01 in the checkpoint, 0.001 now" in err
    assert "--seed: 42 in the checkpoint, 7 now" in err
    assert "logging_steps" not in err  # only how often it logs: may differ
    assert "--ignore_args_mismatch true" in err

    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(json.dumps(r) + "\n" for r in PAIRS[:7]))
    assert main([*rlhf(tiny_model_dir, str(fewer), out, "--max_steps", "4", "--save_steps", "2"),
                 "--resume_from_checkpoint", checkpoint]) == 2
    err = capsys.readouterr().err
    assert "train_rows: 8 in the checkpoint, 7 now" in err and "train_data_sha256: " in err

    assert main([*argv, "--learning_rate", "1e-3", "--ignore_args_mismatch", "true"]) == 0


def test_last_without_a_checkpoint_says_so(tiny_model_dir, pairs_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    argv = rlhf(tiny_model_dir, pairs_file, tmp_path / "out", "--max_steps", "2", "--resume_from_checkpoint", "last")
    assert main(argv) == 2
    assert f"--resume_from_checkpoint last: no complete checkpoint under {tmp_path / 'out'}" in capsys.readouterr().err
    assert main(rlhf(tiny_model_dir, pairs_file, tmp_path / "none", "--resume_from_checkpoint", "last")) == 2
    assert f"--output_dir {tmp_path / 'none'}: no such directory" in capsys.readouterr().err


def test_resuming_a_finished_run_rewrites_nothing(tiny_model_dir, pairs_file, copied_run):
    out, run_dir = copied_run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    argv = rlhf(tiny_model_dir, pairs_file, out, "--max_steps", "4", "--save_steps", "2")
    assert main([*argv, "--resume_from_checkpoint", "last"]) == 0
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


# ------------------------------------------------------------------ the same guarantees for every method
# The runner (alignkit/training/runner.py) gives the offline and the online loop one shell; these run the
# same checks on DPO, GRPO and PPO.

# --eval_steps 100: the held-out prompts are evaluated at the end only, whatever --save_steps a test uses
# (unset, --eval_steps follows --save_steps, as in ms-swift).
ONLINE = ["--dataset", "arith-prompts#8", "--max_completion_length", "6", "--batch_size", "2", "--max_steps", "4",
          "--dtype", "fp32", "--report_to", "none", "--learning_rate", "1e-2", "--logging_steps", "1",
          "--eval_steps", "100"]


@pytest.fixture(scope="module")
def method_argv(tiny_model_dir, pairs_file, tmp_path_factory):
    """{method: (argv(out, *extra), steps)}: a short LoRA run of each, 4 steps (dpo: 8)."""
    from test_online_cli import PLUGIN, build_tiny_reward_model
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("methods")
    plugin = root / "rewards.py"
    plugin.write_text(PLUGIN)
    reward_model = build_tiny_reward_model(root / "rm", AutoTokenizer.from_pretrained(tiny_model_dir))
    return {
        "dpo": (lambda out, *extra: rlhf(tiny_model_dir, pairs_file, out, *LORA_RUN, *extra), 8),
        "grpo": (
            lambda out, *extra: [
                "rlhf",
                "--rlhf_type",
                "grpo",
                "--model",
                tiny_model_dir,
                "--output_dir",
                str(out),
                *ONLINE,
                "--num_generations",
                "2",
                "--external_plugins",
                str(plugin),
                "--reward_funcs",
                "length_reward",
                *extra,
            ],
            4,
        ),
        "ppo": (
            lambda out, *extra: [
                "rlhf",
                "--rlhf_type",
                "ppo",
                "--model",
                tiny_model_dir,
                "--output_dir",
                str(out),
                *ONLINE,
                "--reward_model",
                str(reward_model),
                "--num_ppo_epochs",
                "2",
                *extra,
            ],
            4,
        ),
    }


@pytest.fixture(scope="module")
def method_baselines(method_argv, tmp_path_factory):
    """Each method's uninterrupted run, computed once when a test asks for it: {method: run directory}."""
    runs = {}

    def baseline(method: str) -> Path:
        if method not in runs:
            out = tmp_path_factory.mktemp(f"baseline-{method}")
            argv, _ = method_argv[method]
            assert main(argv(out, "--save_steps", "100")) == 0
            runs[method] = only_run_dir(out)
        return runs[method]

    return baseline


def comparable_records(run_dir: Path) -> list[dict]:
    """Logged records without wall times (``step_seconds``, ``time/*``), which no rerun repeats."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in log_records(run_dir)]


def assert_continues_the_run(method: str, run_dir: Path, baseline: Path, steps: int) -> None:
    assert_bit_identical(baseline / f"checkpoint-{steps}", run_dir / f"checkpoint-{steps}")
    assert comparable_records(run_dir) == comparable_records(baseline)
    if method == "ppo":  # the value model is trained too, and resumed
        assert_bit_identical(
            baseline / f"checkpoint-{steps}" / "value_model", run_dir / f"checkpoint-{steps}" / "value_model"
        )
    if method != "dpo":  # one line per completion, none repeated by the resumed steps
        completions = (run_dir / "completions.jsonl").read_text()
        assert completions == (baseline / "completions.jsonl").read_text()


@pytest.mark.parametrize("method", ["dpo", "grpo", "ppo"])
def test_sigterm_mid_step_saves_exits_143_and_the_checkpoint_resumes_bit_identically(
    method, method_argv, method_baselines, tmp_path
):
    argv, steps = method_argv[method]
    out, log = tmp_path / "out", tmp_path / "child.log"
    assert run_child(argv(out, "--save_steps", "100"), log, "TERM@micro_batch:3") == 128 + signal.SIGTERM
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-3"]
    assert f"stopped by SIGTERM; saved {run_dir / 'checkpoint-3'}" in log.read_text()
    assert main([*argv(out, "--save_steps", "100"), "--resume_from_checkpoint", str(run_dir / "checkpoint-3")]) == 0
    assert only_run_dir(out) == run_dir  # the run goes on in its own directory
    assert_continues_the_run(method, run_dir, method_baselines(method), steps)


@pytest.mark.parametrize("spec", ["last", "run_dir"])
@pytest.mark.parametrize("method", ["dpo", "grpo", "ppo"])
def test_sigkill_mid_step_then_resume_last_or_the_run_directory_is_bit_identical(
    method, spec, method_argv, method_baselines, tmp_path
):
    argv, steps = method_argv[method]
    out = tmp_path / "out"
    # Killed in step 4: step 3's records (and completions) are logged, its checkpoint is checkpoint-2.
    assert run_child(argv(out, "--save_steps", "2"), tmp_path / "child.log", "KILL@micro_batch:4") == -signal.SIGKILL
    run_dir = only_run_dir(out)
    assert checkpoint_names(run_dir) == ["checkpoint-2"]
    assert main([*argv(out, "--save_steps", "2"), "--resume_from_checkpoint",
                 "last" if spec == "last" else str(run_dir)]) == 0
    assert only_run_dir(out) == run_dir
    assert_continues_the_run(method, run_dir, method_baselines(method), steps)


@pytest.mark.parametrize("method", ["dpo", "grpo", "ppo"])
def test_resuming_with_another_learning_rate_is_refused_for_every_method(method, method_argv, tmp_path, capsys):
    argv, _ = method_argv[method]
    out = tmp_path / "out"
    assert main(argv(out, "--max_steps", "2", "--save_steps", "1")) == 0
    checkpoint = only_run_dir(out) / "checkpoint-1"
    capsys.readouterr()
    assert main([*argv(out, "--max_steps", "2", "--learning_rate", "1e-3"),
                 "--resume_from_checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert "this run's settings differ from the checkpoint's" in err
    assert "--learning_rate: 0.01 in the checkpoint, 0.001 now" in err
    assert len(list(out.iterdir())) == 1  # nothing new was written


@pytest.mark.parametrize("method", ["dpo", "grpo", "ppo"])
def test_a_non_finite_loss_skips_that_update_and_the_run_goes_on(method, method_argv, tmp_path, monkeypatch):
    from alignkit.algorithms.dpo import DPO
    from alignkit.algorithms.grpo import GRPO
    from alignkit.algorithms.ppo import PPO

    cls = {"dpo": DPO, "grpo": GRPO, "ppo": PPO}[method]
    calls = []
    original = cls.loss

    def nan_on_the_third_call(self, model, batch):
        loss, metrics = original(self, model, batch)
        calls.append(1)
        return (loss * float("nan"), metrics) if len(calls) == 3 else (loss, metrics)

    monkeypatch.setattr(cls, "loss", nan_on_the_third_call)
    argv, steps = method_argv[method]
    out = tmp_path / "out"
    assert main(argv(out, "--save_steps", "100")) == 0
    run_dir = only_run_dir(out)
    skipped = [r for r in log_records(run_dir) if "nonfinite" in r]
    assert len(skipped) == 1 and "non-finite loss" in skipped[0]["nonfinite"]
    assert log_records(run_dir)[-1]["step"] == steps or any(r["step"] == steps for r in log_records(run_dir))
    assert all(torch.isfinite(v).all() for v in weights(run_dir / f"checkpoint-{steps}").values())
