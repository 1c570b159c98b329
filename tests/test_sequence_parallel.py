"""--sequence_parallel_size (alignkit/training/sequence_parallel.py): Ulysses sequence parallelism through
DeepSpeed on CPU (gloo). Two processes that each run half of every sequence's tokens train exactly like one
process running them all: same losses, same trained weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import argv, data, free_port, launch, losses, wait  # noqa: F401 - data is a fixture

from alignkit.cli import main

pytest.importorskip("deepspeed")


def adapter(out) -> dict[str, torch.Tensor]:
    (run_dir,) = out.iterdir()
    last = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return load_file(last / "adapter_model.safetensors")


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_two_processes_splitting_each_sequence_train_like_one(tiny_model_dir, data, tmp_path, command):  # noqa: F811
    dataset = data / ("pairs.jsonl" if command == "dpo" else "sft.jsonl")
    assert main(argv(command, tiny_model_dir, dataset, tmp_path / "one", "--batch_size", "4")) == 0
    log = tmp_path / "sp.log"
    wait(launch(argv(command, tiny_model_dir, dataset, tmp_path / "sp", "--batch_size", "4",
                     "--sequence_parallel_size", "2"), log, NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    text = log.read_text()
    assert "Sequence parallelism: 1 groups of 2 processes" in text
    assert "--sequence_parallel_size runs padded batches with sdpa attention" in text
    single, split = losses(tmp_path / "one"), losses(tmp_path / "sp")
    assert len(single) == 3  # 9 rows in batches of 4: both processes of the group took every row
    assert split == pytest.approx(single, abs=1e-4)
    one, two = adapter(tmp_path / "one"), adapter(tmp_path / "sp")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-4), key


def test_sequence_parallel_needs_a_multiple_of_its_size_in_processes(tiny_model_dir, data, tmp_path, capsys):  # noqa: F811
    assert main(argv("sft", tiny_model_dir, data / "sft.jsonl", tmp_path / "out", "--sequence_parallel_size",
                     "2")) == 2
    assert "the 1 process(es) do not split into groups of 2" in capsys.readouterr().err


def test_online_methods_are_not_split(tiny_model_dir, tmp_path, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--dataset", "arith-prompts#8",
                 "--reward_funcs", "arith_accuracy", "--sequence_parallel_size", "2",
                 "--output_dir", str(tmp_path)]) == 2
    assert "splits the sequences of offline training only" in capsys.readouterr().err


def test_an_embedding_run_splits_sequences_like_one_process(tiny_model_dir, tmp_path):
    """Pooling reads the gathered hidden states (``output_hidden_states``): the split is invisible to the loss."""
    from test_retrieval import retrieval_file

    rows = retrieval_file(tmp_path)
    common = ["sft", "--model", tiny_model_dir, "--dataset", rows, "--task_type", "embedding", "--loss_type", "infonce",
              "--train_type", "full", "--max_steps", "2", "--batch_size", "4", "--split_dataset_ratio", "0",
              "--logging_steps", "1", "--dtype", "fp32", "--report_to", "none", "--learning_rate", "1e-3"]
    assert main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    log = tmp_path / "sp.log"
    wait(launch([*common, "--output_dir", str(tmp_path / "sp"), "--sequence_parallel_size", "2"], log,
                NPROC_PER_NODE="2", MASTER_PORT=str(free_port())), log)
    assert losses(tmp_path / "sp") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
