"""Checkpoints under the sharding engines (ZeRO-3, FSDP): the whole weights are gathered by every process and
written by the main one; optimizer state split across processes is not written as if it were whole.

A GPU run of bench/gpu_check.py (FSDP2, one H200) failed here: the unwrapped model's tensors are shards
(DTensors), which safetensors cannot write. CPUs cannot run these engines (accelerate falls back to plain
data parallelism there), so the engine's answers are stood in for: what ``Accelerator.get_state_dict`` returns
and which engine the accelerator reports.
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.training.checkpoint import TrainerState, save_checkpoint
from alignkit.training.metrics_log import RunningMean
from alignkit.training.runner import LoopConfig, Runner


def gathered_weights(model) -> dict[str, torch.Tensor]:
    """What the engine's gather returns: the whole weights (here: the model's own, marked by a constant)."""
    return {name: torch.full_like(tensor, 0.25) for name, tensor in model.state_dict().items()}


def test_save_checkpoint_writes_the_gathered_state_dict_not_the_models_own_tensors(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir, None)
    path = save_checkpoint(tmp_path, TrainerState(global_step=1), model=model, tokenizer=load_tokenizer(tiny_model_dir),
                           optimizer=None, scheduler=None, args={}, save_total_limit=None,
                           state_dict=gathered_weights(model))
    saved = load_file(path / "model.safetensors")
    assert saved and all(torch.all(tensor == 0.25) for tensor in saved.values())


def test_save_checkpoint_refuses_non_finite_gathered_weights(tiny_model_dir, tmp_path):
    model = load_causal_lm(tiny_model_dir, None)
    weights = gathered_weights(model)
    weights[next(iter(weights))][0] = float("nan")
    with pytest.raises(AlignkitError, match="holds NaN or inf"):
        save_checkpoint(tmp_path, TrainerState(global_step=1), model=model,
                        tokenizer=load_tokenizer(tiny_model_dir), optimizer=None, scheduler=None, args={},
                        save_total_limit=None, state_dict=weights)
    assert not any(tmp_path.glob("checkpoint-1"))


def runner_under(engine: str, processes: int, tiny_model_dir, tmp_path, monkeypatch, **config) -> Runner:
    """A Runner whose accelerator reports ``engine`` ("FSDP", "DEEPSPEED" with ZeRO-3/2) over ``processes``."""
    runner = Runner(LoopConfig(**config), tmp_path, args_for_checkpoint={}, tokenizer=load_tokenizer(tiny_model_dir))
    runner.prepare(load_causal_lm(tiny_model_dir, None), optimizer_steps=2)
    runner.running_mean = RunningMean()  # what the running loop holds
    kind, _, stage = engine.partition(":")
    monkeypatch.setattr(type(runner.accelerator), "distributed_type", property(lambda self: kind), raising=False)
    monkeypatch.setattr(Runner, "zero_stage", property(lambda self: int(stage) if stage else None))
    monkeypatch.setattr(Runner, "num_processes", property(lambda self: processes))
    calls = []
    monkeypatch.setattr(runner.accelerator, "get_state_dict",
                        lambda model: calls.append(model) or gathered_weights(runner.unwrapped))
    runner.gather_calls = calls
    return runner


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED:3"])
def test_sharded_parameters_are_gathered_for_the_checkpoint(engine, tiny_model_dir, tmp_path, monkeypatch):
    runner = runner_under(engine, 1, tiny_model_dir, tmp_path, monkeypatch)
    path = runner.save()
    assert runner.gather_calls == [runner.model]
    assert all(torch.all(tensor == 0.25) for tensor in load_file(path / "model.safetensors").values())
    assert (path / "optimizer.pt").is_file()  # one process: its optimizer state is the whole state


def test_zero2_saves_the_models_own_weights(tiny_model_dir, tmp_path, monkeypatch):
    runner = runner_under("DEEPSPEED:2", 1, tiny_model_dir, tmp_path, monkeypatch)
    path = runner.save()
    assert runner.gather_calls == []
    assert not any(torch.all(tensor == 0.25) for tensor in load_file(path / "model.safetensors").values())


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED:2", "DEEPSPEED:3"])
def test_optimizer_state_split_across_processes_is_not_saved_as_whole(engine, tiny_model_dir, tmp_path,
                                                                       monkeypatch, caplog):
    runner = runner_under(engine, 2, tiny_model_dir, tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="alignkit"):
        path = runner.save()
    assert (path / "model.safetensors").is_file() and not (path / "optimizer.pt").exists()
    assert "no optimizer state" in caplog.text


def test_ddp_across_processes_keeps_the_optimizer_state(tiny_model_dir, tmp_path, monkeypatch):
    runner = runner_under("MULTI_GPU", 2, tiny_model_dir, tmp_path, monkeypatch)
    assert (runner.save() / "optimizer.pt").is_file()


def test_resume_under_sharded_parameters_stops_with_an_error(tiny_model_dir, tmp_path, monkeypatch):
    runner = runner_under("FSDP", 1, tiny_model_dir, tmp_path, monkeypatch)
    path = runner.save()
    with pytest.raises(AlignkitError, match="resuming under FSDP is not supported"):
        runner.resume(str(path))
