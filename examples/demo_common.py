"""What the GRPO and PPO demos share: the format-teaching SFT run, wall-clock timing, and the report's
record of each run's arguments."""

from __future__ import annotations

import time
from pathlib import Path

from alignkit.config import RunArguments


def sft_arguments(steps: int, out: Path) -> RunArguments:
    """A short LoRA SFT on the built-in task: teaches the ``Answer: <number>`` format the base model never uses."""
    return RunArguments(dataset=["arith-sft"], max_steps=steps, per_device_train_batch_size=8, learning_rate=5e-4,
                        lr_scheduler_type="constant", max_length=128, logging_steps=4, output_dir=str(out / "sft"),
                        report_to=["none"], val_dataset=["arith-sft:test#8"])


def timed(label: str, times: dict, fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    times[label] = round(time.perf_counter() - started, 1)
    print(f"[demo] {label}: {times[label]} s")
    return result


def changed_arguments(args: RunArguments) -> dict:
    """The arguments that differ from the defaults: the CLI command, as Python."""
    defaults = RunArguments().to_dict()
    return {k: v for k, v in args.to_dict().items() if v != defaults[k]}
