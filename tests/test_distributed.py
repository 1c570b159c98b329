"""Data parallelism on CPU (gloo): N processes × B rows train exactly like 1 process × N·B rows.

The distributed runs go through the real launch paths: ``NPROC_PER_NODE=2 python -m alignkit ...`` (which
re-executes itself under torchrun) and two launchers with ``NNODES=2`` on loopback, as two machines would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[1]

SUMS = [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20), (4, 13)]
PAIRS = [
    {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                  {"role": "assistant", "content": f"Answer: {a + b}"}],
     "rejected_response": f"Answer: {a + b + 1}"}
    for a, b in SUMS
]
# Answers of different lengths, so that SFT's token-level mean is not a mean of per-row means.
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                  {"role": "assistant", "content": f"The sum of {a} and {b} is {a + b}." * (1 + i % 3)}]}
    for i, (a, b) in enumerate(SUMS)
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name, rows in (("pairs", PAIRS), ("sft", CONVERSATIONS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def argv(command: str, model: str, dataset: Path, out: Path, *extra: str) -> list[str]:
    # 9 rows in global batches of 4: the epoch's last batch has one row, so the second process has none.
    head = ["rlhf", "--rlhf_type", "dpo"] if command == "dpo" else ["sft"]
    return [*head, "--model", model, "--dataset", str(dataset), "--output_dir", str(out), "--dtype", "fp32",
            "--report_to", "none", "--learning_rate", "1e-2", "--logging_steps", "1", "--lora_dropout", "0",
            "--save_steps", "2", *extra]


def losses(out: Path) -> list[float]:
    (run_dir,) = out.iterdir()
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    environ.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", **env)
    return subprocess.Popen([sys.executable, "-m", "alignkit", *args], cwd=ROOT, env=environ,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait(process: subprocess.Popen, log: Path) -> None:
    try:
        code = process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert code == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_two_processes_of_two_rows_match_one_process_of_four(tiny_model_dir, data, tmp_path, command):
    dataset = data / ("pairs.jsonl" if command == "dpo" else "sft.jsonl")
    assert main(argv(command, tiny_model_dir, dataset, tmp_path / "one", "--batch_size", "4")) == 0
    log = tmp_path / "two.log"
    wait(launch(argv(command, tiny_model_dir, dataset, tmp_path / "two", "--batch_size", "2"), log,
                NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)

    assert "torch.distributed.run --nproc_per_node 2" in log.read_text()  # the command it ran is logged
    single, double = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(single) == 3  # 9 rows in batches of 4
    assert double == pytest.approx(single, abs=1e-4)
    # Only rank 0 wrote: one run directory, one set of checkpoints, one record per step.
    (run_dir,) = (tmp_path / "two").iterdir()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_gradient_accumulation_of_four_single_rows_matches_one_batch_of_four(tiny_model_dir, data, tmp_path, command):
    dataset = data / ("pairs.jsonl" if command == "dpo" else "sft.jsonl")
    assert main(argv(command, tiny_model_dir, dataset, tmp_path / "batch", "--batch_size", "4",
                     "--max_steps", "2")) == 0
    assert main(argv(command, tiny_model_dir, dataset, tmp_path / "accumulated", "--batch_size", "1",
                     "--gradient_accumulation_steps", "4", "--max_steps", "2")) == 0
    assert losses(tmp_path / "accumulated") == pytest.approx(losses(tmp_path / "batch"), abs=1e-4)


def test_kto_two_processes_of_two_rows_match_one_process_of_four(tiny_model_dir, data, tmp_path):
    # KTO's z is one number per step over both processes' rows (docs/objectives.md). The 9 pairs give 18 KTO rows:
    # the epoch's last global batch holds 2, so the second process runs an uncounted KL batch there.
    def kto(out: Path, *extra: str) -> list[str]:
        return ["rlhf", "--rlhf_type", "kto", *argv("sft", tiny_model_dir, data / "pairs.jsonl", out, *extra)[1:]]

    assert main(kto(tmp_path / "one", "--batch_size", "4", "--val_dataset", str(data / "pairs.jsonl"))) == 0
    log = tmp_path / "two.log"
    wait(launch(kto(tmp_path / "two", "--batch_size", "2", "--val_dataset", str(data / "pairs.jsonl")), log,
                NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    records = {}
    for name in ("one", "two"):
        (run_dir,) = (tmp_path / name).iterdir()
        records[name] = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    steps = [r for r in records["one"] if "loss" in r]
    assert len(steps) == 5 and max(r["kl"] for r in steps) > 0.1  # z is not hidden by its clamp
    for single, double in zip(records["one"], records["two"]):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "eval_loss", "eval_kl"):
            if key in single:
                assert double[key] == pytest.approx(single[key], abs=1e-4), key


def test_two_nodes_on_loopback_match_one_process(tiny_model_dir, data, tmp_path):
    dataset = data / "pairs.jsonl"
    assert main(argv("dpo", tiny_model_dir, dataset, tmp_path / "one", "--batch_size", "4")) == 0
    port = str(free_port())
    args = argv("dpo", tiny_model_dir, dataset, tmp_path / "nodes", "--batch_size", "2")
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [launch(args, logs[rank], NNODES="2", NODE_RANK=str(rank), NPROC_PER_NODE="1", MASTER_PORT=port)
             for rank in (0, 1)]
    for node, log in zip(nodes, logs):
        wait(node, log)
    assert losses(tmp_path / "nodes") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)


@pytest.mark.slow
def test_two_processes_resume_from_a_checkpoint_of_rank_zero(tiny_model_dir, data, tmp_path):
    dataset = data / "pairs.jsonl"
    full = tmp_path / "full.log"
    wait(launch(argv("dpo", tiny_model_dir, dataset, tmp_path / "full", "--batch_size", "2"), full,
                NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), full)
    (run_dir,) = (tmp_path / "full").iterdir()
    log = tmp_path / "resumed.log"
    wait(launch([*argv("dpo", tiny_model_dir, dataset, tmp_path / "resumed", "--batch_size", "2"),
                 "--resume_from_checkpoint", str(run_dir / "checkpoint-2")], log,
                NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    # The resumed run writes into a new run directory (the original has a later checkpoint) under --output_dir.
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "full"), abs=1e-5)


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_process_exits_with_its_status_and_its_output_flushed(world_size):
    # A launched process leaves by os._exit (no interpreter teardown): what it printed must still arrive.
    script = ("import logging, sys; logging.basicConfig(stream=sys.stderr); print('trained', end=''); "
              "logging.getLogger('x').warning('logged'); "
              "from alignkit.training.distributed import exit_process; exit_process(3)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WORLD_SIZE": world_size, "PYTHONUNBUFFERED": ""})
    assert (done.returncode, done.stdout) == (3, "trained")
    assert "logged" in done.stderr
