"""The GRPO benchmark's fair-work check: every framework's step must have sampled the benchmark's prompts, groups
and lengths and trained on them with one optimizer step, by the run's own records, or no ratio is printed.

Two records per run: what the framework says it is configured to do (``GrpoConfigured``: TRL's resolved trainer
arguments, alignkit's schedule) and what the shared reward function (bench/peers/grpo_reward.py) saw at every
call, which is one line per generation: how many completions, each one's prompt and its length in tokens (and its
reward, which bench/grpo_run.py reports on and this check does not read).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from accounting import AccountingError


@dataclass(frozen=True)
class GrpoWork:
    """The benchmark's step: ``prompts`` of each step (in dataset order), G completions of each, at most
    ``max_completion_length`` tokens, all trained in one optimizer step, one pass."""

    prompts: list[list[str]]  # per step
    num_generations: int
    max_completion_length: int

    @property
    def completions_per_step(self) -> int:
        return len(self.prompts[0]) * self.num_generations


@dataclass(frozen=True)
class GrpoConfigured:
    optimizer_steps: int  # logged
    completions_per_optimizer_step: int
    completions_per_generation: int
    num_generations: int
    max_completion_length: int
    update_epochs: int


def read_reward_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify_grpo(configured: GrpoConfigured, calls: list[dict], work: GrpoWork, *, who: str) -> int:
    """The completions per step every step of the run sampled and trained, or AccountingError saying what differs."""
    expected = work.completions_per_step
    steps = len(work.prompts)
    for name, theirs, ours in (
        ("completions per generation", configured.completions_per_generation, expected),
        ("completions per optimizer step", configured.completions_per_optimizer_step, expected),
        ("num_generations", configured.num_generations, work.num_generations),
        ("max_completion_length", configured.max_completion_length, work.max_completion_length),
        ("update passes per generation", configured.update_epochs, 1),
        ("optimizer steps logged", configured.optimizer_steps, steps),
    ):
        if theirs != ours:
            raise AccountingError(f"{who}: {name} is {theirs}, the benchmark's is {ours}")
    if len(calls) != steps:
        raise AccountingError(f"{who}: the reward function was called {len(calls)} times for {steps} steps")
    for step, (call, prompts) in enumerate(zip(calls, work.prompts), start=1):
        if call["completions"] != expected:
            raise AccountingError(f"{who}: step {step} scored {call['completions']} completions, the benchmark's "
                                  f"step is {expected}")
        # Each prompt G times (the order within a step is the framework's own).
        wanted = sorted(p for p in prompts for _ in range(work.num_generations))
        if sorted(call["prompts"]) != wanted:
            raise AccountingError(f"{who}: step {step} sampled other prompts than the benchmark's step {step} "
                                  f"({sorted(set(call['prompts']))} != {sorted(set(prompts))})")
        lengths = call.get("lengths")
        if lengths is None:
            raise AccountingError(f"{who}: step {step}: the reward function got no completion token ids")
        if max(lengths) > work.max_completion_length:
            raise AccountingError(f"{who}: step {step} sampled a completion of {max(lengths)} tokens, over "
                                  f"max_completion_length {work.max_completion_length}")
    return expected


_SCHEDULE = re.compile(r"Online schedule: (\d+) steps of (\d+) prompts \((\d+) completions\) per process, (\d+) "
                       r"process\(es\), (\d+) optimizer steps each \(mini-batches of (\d+), micro-batches of \d+, "
                       r"(\d+) update epoch")


def from_alignkit_grpo(run_dir: Path, log_text: str) -> GrpoConfigured:
    """alignkit: the schedule it logs ("Online schedule: ..."), ``args.json``, a ``logging.jsonl`` record per step."""
    match = _SCHEDULE.search(log_text)
    if match is None:
        raise AccountingError(f"{run_dir}: the run logged no 'Online schedule' line")
    _, _, completions, processes, optimizer_steps, minibatch, epochs = map(int, match.groups())
    if optimizer_steps != 1:
        raise AccountingError(f"{run_dir}: {optimizer_steps} optimizer steps per generation, the benchmark's is 1")
    args = json.loads((run_dir / "args.json").read_text())
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if line.strip()]
    return GrpoConfigured(
        optimizer_steps=len([r for r in records if "time/update_s" in r]),
        completions_per_optimizer_step=minibatch * processes,
        completions_per_generation=completions * processes,
        num_generations=int(args["num_generations"]),
        max_completion_length=int(args["max_completion_length"]),
        update_epochs=epochs,
    )


def from_trl_grpo(record: dict) -> GrpoConfigured:
    """TRL: what bench/peers/trl_grpo.py read off the finished GRPOTrainer."""
    return GrpoConfigured(**{name: int(record[name]) for name in GrpoConfigured.__dataclass_fields__})
