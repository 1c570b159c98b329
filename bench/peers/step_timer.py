"""A transformers TrainerCallback that records each optimizer step's wall time and loss (used by both peers)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self):
        self.step_seconds: list[float] = []
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self.started)


def summary(timer: StepTimer, trainer) -> dict:
    """Step times, losses, held-out accuracy and what the trainer says each step consumed (bench/accounting.py)."""
    from accounting import hf_trainer_record

    log_history = trainer.state.log_history
    losses = [r["loss"] for r in log_history if "loss" in r]
    evals = [r for r in log_history if "eval_rewards/accuracies" in r]
    return {
        "step_seconds": timer.step_seconds,
        "losses": losses,
        "eval_reward_accuracy": evals[-1]["eval_rewards/accuracies"] if evals else None,
        "accounting": hf_trainer_record(trainer),
    }
