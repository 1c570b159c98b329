"""With every speed-up on (padding-free, prefix sharing, precomputed reference), a DPO run's per-step
losses equal the plain padded path's within 1e-3 over 32 steps, and the speed-ups are logged."""

import json
import logging

import pytest
import torch

from alignkit.cli import main

PAIRS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}? Reply with 'Answer: <number>'."},
            {"role": "assistant", "content": f"Answer: {a + b}"},
        ],
        "rejected_response": f"Answer: {a + b + d}",
    }
    for a, b, d in [(12, 30, 1), (1, 2, 3), (5, 6, -1), (7, 8, 10), (10, 11, 2), (3, 4, 1), (9, 9, 5), (2, 20, 7)]
]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matmuls gain nothing from a second thread, and on a loaded machine two threads
    stall at every barrier: 32-step runs take 5 s on one thread against 70 s on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def losses(output_dir) -> list[float]:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return [r["loss"] for r in map(json.loads, (run_dir / "logging.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("train_type", ["lora", "full"])
def test_speedups_on_match_plain_path_over_32_steps(tiny_model_dir, tmp_path, train_type, monkeypatch, caplog):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in PAIRS) + "\n")
    common = [
        "rlhf", "--rlhf_type", "dpo", "--model", tiny_model_dir, "--dataset", str(data), "--train_type", train_type,
        "--max_steps", "32", "--logging_steps", "1", "--batch_size", "3", "--learning_rate", "1e-3",
        "--lora_dropout", "0", "--dtype", "fp32", "--report_to", "none", "--rpo_alpha", "0.5",
    ]
    plain = ["--padding_free", "false", "--prefix_sharing", "false", "--precompute_ref_log_probs", "false"]
    assert main([*common, *plain, "--output_dir", str(tmp_path / "plain")]) == 0
    with caplog.at_level(logging.INFO, logger="alignkit"):
        assert main([*common, "--output_dir", str(tmp_path / "fast")]) == 0
    assert ("Speed-ups on: padding-free packing, prompt-prefix sharing, precomputed reference log-probs, "
            "LM head on labelled positions only; off: bf16 autocast, gradient checkpointing") in caplog.text
    assert list((tmp_path / "cache" / "ref_logps").glob("*.pt"))

    slow, fast = losses(tmp_path / "plain"), losses(tmp_path / "fast")
    assert len(slow) == len(fast) == 32
    assert slow[-1] < slow[0] - 0.05  # it learns, so later steps compare diverged-if-wrong weights
    assert max(abs(a - b) for a, b in zip(slow, fast)) < 1e-3
