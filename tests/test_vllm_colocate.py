"""The colocated vLLM engine on several processes (alignkit/generation/vllm.py): which ranks share an engine,
the engine's arguments, and the gather → generate → slice of a tensor-parallel group over real gloo processes.

vLLM itself cannot run here (no CUDA), so the engine is replaced by ``RecordingEngine``, a test double with
the ``generate(prompts, seeds)`` interface of the engine: completions that spell out the prompt and the seed
they were drawn with. What is tested is alignkit's orchestration around the engine, not vLLM.
"""

from __future__ import annotations

import datetime
import json

import pytest
import torch
import torch.multiprocessing as mp
from test_distributed import free_port

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.generation.vllm import (
    VllmRollout,
    colocated_engine_kwargs,
    engine_groups,
    generate_in_group,
    tensor_parallel_group,
)


@pytest.mark.parametrize(("world", "size", "groups"), [
    (1, 1, [[0]]),
    (2, 1, [[0], [1]]),
    (2, 2, [[0, 1]]),
    (4, 2, [[0, 1], [2, 3]]),
    (8, 4, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    (8, 2, [[0, 1], [2, 3], [4, 5], [6, 7]]),
])
def test_groups_are_consecutive_ranks(world, size, groups):
    assert engine_groups(world, size) == groups


@pytest.mark.parametrize(("world", "size"), [(3, 2), (1, 2), (6, 4), (2, 0)])
def test_processes_not_a_multiple_of_the_group_are_refused(world, size):
    with pytest.raises(AlignkitError, match=f"--vllm_tensor_parallel_size {size} with {world} process"):
        engine_groups(world, size)


def test_engine_arguments_of_each_process():
    kwargs = [colocated_engine_kwargs("/m", rank=rank, tensor_parallel_size=2, seed=42, gpu_memory_utilization=0.3,
                                      max_model_len=1536, enable_prefix_caching=False) for rank in range(4)]
    assert kwargs[3] == {"model": "/m", "tensor_parallel_size": 2, "distributed_executor_backend": "external_launcher",
                         "seed": 43, "gpu_memory_utilization": 0.3, "max_model_len": 1536,
                         "enable_prefix_caching": False}
    # one seed per group: vLLM runs one schedule on all GPUs of a tensor-parallel engine
    assert [k["seed"] for k in kwargs] == [42, 42, 43, 43]
    alone = [colocated_engine_kwargs("/m", rank=rank, tensor_parallel_size=1, seed=7, gpu_memory_utilization=0.9,
                                     max_model_len=64, enable_prefix_caching=True)["seed"] for rank in range(2)]
    assert alone == [7, 8]  # an engine per process, each its own seed


class RecordingEngine:
    """Test double for vLLM: ``generate(prompts, seeds)`` answers [len, seed, *prompt] per prompt and records
    every batch it was asked for."""

    def __init__(self):
        self.batches = []

    def __call__(self, prompts, seeds):
        self.batches.append((prompts, seeds))
        return [[len(p), -1 if seeds is None else seeds[i], *p] for i, p in enumerate(prompts)]


# rank → (prompts, seeds) of one training step: different counts per process, as an evaluation or a short share
SHARES = {0: ([[1, 2], [3]], [10, 11]), 1: ([[4, 5, 6]], [12])}


def _worker(rank: int, port: int, out: str) -> None:
    # a collective left waiting (a process that does not join) fails after a minute instead of hanging
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))
    result = {}
    # TP 2: both ranks share one engine; each generates the group's 3 prompts and keeps its own answers
    group = tensor_parallel_group(2)
    engine = RecordingEngine()
    prompts, seeds = SHARES[rank]
    result["tp_mine"] = generate_in_group(engine, prompts, seeds, group)
    result["tp_batches"] = engine.batches
    # evaluation: rank 0 alone has prompts (greedy: no seeds); its group peer joins with none
    rollout = object.__new__(VllmRollout)  # the orchestration of __call__/join_main, around the double
    rollout.group, engine, rollout.want_logprobs = group, RecordingEngine(), False
    rollout._generate = lambda p, greedy, seeds: [(ids, None) for ids in engine(p, seeds)]  # (ids, log-probs)
    if rank == 0:
        result["eval_mine"] = list(rollout([[7], [8, 9]], greedy=True))
    else:
        rollout.join_main()
    result["eval_batches"] = engine.batches
    # TP 1: no group, each process its own engine and its own prompts only
    engine = RecordingEngine()
    result["own_mine"] = generate_in_group(engine, prompts, seeds, tensor_parallel_group(1))
    result["own_batches"] = engine.batches
    with open(f"{out}/{rank}.json", "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()


def test_a_tensor_parallel_group_generates_its_prompts_together_and_each_keeps_its_own(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    everyone = [[[1, 2], [3], [4, 5, 6]], [10, 11, 12]]
    for rank, result in enumerate(results):
        assert result["tp_batches"] == [everyone]  # the same batch on every GPU of the engine, in rank order
        prompts, seeds = SHARES[rank]
        assert result["tp_mine"] == [[len(p), s, *p] for p, s in zip(prompts, seeds)]  # its prompts, their seeds
        assert result["eval_batches"] == [[[[7], [8, 9]], None]]  # rank 1 took part in rank 0's evaluation
        assert result["own_batches"] == [[prompts, seeds]]
        assert result["own_mine"] == result["tp_mine"]  # where a prompt lands does not change its sample
    assert results[0]["eval_mine"] == [[1, -1, 7], [2, -1, 8, 9]]


def test_several_processes_with_a_tensor_parallel_engine_pass_the_engine_check(tiny_model_dir, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("alignkit.training.online_run.start_run", lambda args, method=None: type(
        "S", (), {"engine": None, "check_engine": lambda self: None})())
    argv = ["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--reward_funcs", "arith_accuracy",
            "--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_tensor_parallel_size", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--use_vllm needs" in err and "several processes" not in err  # stops only for this machine's lack
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(argv) == 2
    assert ("--vllm_tensor_parallel_size 2 with 3 process(es): each group of 2 consecutive processes shares one "
            "colocated vLLM engine") in capsys.readouterr().err


def test_dynamic_sample_with_a_tensor_parallel_engine_is_refused(tiny_model_dir, capsys):
    assert main(["rlhf", "--rlhf_type", "grpo", "--model", tiny_model_dir, "--reward_funcs", "arith_accuracy",
                 "--use_vllm", "true", "--vllm_tensor_parallel_size", "2", "--dynamic_sample", "true"]) == 2
    assert "--vllm_tensor_parallel_size 2 with --dynamic_sample" in capsys.readouterr().err


def test_engine_answers_carry_the_sampled_tokens_logprobs_when_asked():
    from types import SimpleNamespace

    from alignkit.generation.vllm import colocated_engine_kwargs, engine_answer

    step = lambda token, value: {token: SimpleNamespace(logprob=value), 99: SimpleNamespace(logprob=-9.0)}  # noqa: E731
    sample = SimpleNamespace(token_ids=[5, 6], logprobs=[step(5, -0.5), step(6, -1.25)], finish_reason="stop",
                             stop_reason=2)
    assert engine_answer(sample, [2], logprobs=True) == ([5, 6, 2], [-0.5, -1.25])  # the stop token appended
    assert engine_answer(sample, [2], logprobs=False) == ([5, 6, 2], None)
    kwargs = dict(rank=0, tensor_parallel_size=1, seed=0, gpu_memory_utilization=0.3, max_model_len=64,
                  enable_prefix_caching=True)
    assert colocated_engine_kwargs("m", **kwargs, logprobs=True)["logprobs_mode"] == "processed_logprobs"
    assert "logprobs_mode" not in colocated_engine_kwargs("m", **kwargs)
