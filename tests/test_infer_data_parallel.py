"""`NPROC_PER_NODE=2 alignkit infer --val_dataset ...` (ms-swift's data-parallel batch inference): two CPU
processes under torchrun write the same results, in dataset order, as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.generation import data_parallel

ROWS = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"}]}
        for a, b in [(12, 30), (1, 2), (5, 6), (7, 8), (10, 11), (3, 4), (9, 9), (2, 20), (4, 4)]]


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def run_infer(model: str, data: Path, result: Path, env: dict) -> None:
    command = [sys.executable, "-m", "alignkit", "infer", "--model", model, "--val_dataset", str(data), "--dtype",
               "fp32", "--max_new_tokens", "5", "--max_batch_size", "2", "--result_path", str(result)]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_two_processes_write_what_one_writes_in_dataset_order(tiny_chat_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_infer(tiny_chat_model_dir, data, one, {})
    run_infer(tiny_chat_model_dir, data, two, {"NPROC_PER_NODE": "2", "MASTER_PORT": free_port(),
                                               "OMP_NUM_THREADS": "1"})
    single = [json.loads(line) for line in one.read_text().splitlines()]
    parallel = [json.loads(line) for line in two.read_text().splitlines()]
    assert [row["messages"] for row in parallel] == [row["messages"] for row in ROWS]
    assert parallel == single
    assert len({row["response"] for row in single}) > 1  # answers differ per prompt, so order is checked


@pytest.mark.parametrize("world, rows, shares", [(2, 9, [(0, 5), (5, 9)]), (3, 4, [(0, 2), (2, 3), (3, 4)]),
                                                 (2, 1, [(0, 1), (1, 1)])])
def test_shares_are_contiguous_and_cover_every_row(monkeypatch, world, rows, shares):
    got = []
    for rank in range(world):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        share = data_parallel.share(rows)
        got.append((share.start, share.stop))
    assert got == shares


def test_the_default_result_path_is_chosen_once_before_the_launch(monkeypatch):
    from alignkit.training.launch import infer_argv

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    argv = infer_argv(["--val_dataset", "d.jsonl"], {"result_path": None})
    assert argv[:2] == ["--val_dataset", "d.jsonl"] and argv[2] == "--result_path"
    assert argv[3].startswith("infer_result/") and argv[3].endswith(".jsonl")
    assert infer_argv(["--result_path", "r.jsonl"], {"result_path": "r.jsonl"}) == ["--result_path", "r.jsonl"]
    monkeypatch.setenv("LOCAL_RANK", "0")  # a process torchrun started: the path is already on its command line
    assert infer_argv(["x"], {"result_path": None}) == ["x"]
