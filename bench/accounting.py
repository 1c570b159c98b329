"""How many preference pairs each optimizer step consumed, read back from each framework's own records.

A benchmark that divides the same batch by every framework's step time is only fair if every framework's
step did that batch's work. ms-swift, for one, fills in gradient accumulation by itself when the flag is not
given (it aims at a total batch of 16), so its steps silently did 4x the work. The harness therefore reads
what each framework says it did and stops on any mismatch:

- configured: per-device batch x gradient accumulation x processes, as the framework resolved them
  (the trainer's arguments for TRL and ms-swift, the run's ``args.json`` for alignkit);
- consumed: the epoch counter each framework logs after every optimizer step. It advances by
  (pairs consumed / training rows), so the difference between two logged steps times the framework's own
  training-row count is the pairs that step took.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class AccountingError(RuntimeError):
    """A framework did not do the benchmark's work per optimizer step."""


@dataclass(frozen=True)
class StepAccounting:
    """What a run's own records say about one optimizer step's work."""

    train_rows: int  # training pairs the framework kept after its own preprocessing
    per_device_batch: int
    gradient_accumulation: int
    processes: int
    epochs: list[float]  # the epoch counter logged after each optimizer step, in order

    @property
    def configured_pairs(self) -> int:
        return self.per_device_batch * self.gradient_accumulation * self.processes

    def consumed_pairs(self) -> list[float]:
        """Pairs consumed by each logged step: the epoch counter's advance times the training rows."""
        previous, pairs = 0.0, []
        for epoch in self.epochs:
            pairs.append((epoch - previous) * self.train_rows)
            previous = epoch
        return pairs


def verify(accounting: StepAccounting, expected: int, *, who: str) -> int:
    """Return ``expected`` when every step consumed exactly that many pairs; otherwise raise, naming the step."""
    if accounting.configured_pairs != expected:
        raise AccountingError(
            f"{who}: an optimizer step is configured for {accounting.configured_pairs} pairs "
            f"(per-device batch {accounting.per_device_batch} x gradient accumulation "
            f"{accounting.gradient_accumulation} x {accounting.processes} processes), the benchmark's is {expected}"
        )
    if not accounting.epochs:
        raise AccountingError(f"{who}: the run logged no epoch counter, so its steps' work cannot be checked")
    if accounting.train_rows % expected:
        # The epoch's last step would be short; the advance of every step is then not the batch.
        raise AccountingError(f"{who}: {accounting.train_rows} training rows are not whole steps of {expected}")
    for step, pairs in enumerate(accounting.consumed_pairs(), start=1):
        # Logged epochs may be rounded (transformers rounds to 4 digits in some versions): allow a tenth of a pair.
        if abs(pairs - expected) > 0.1:
            raise AccountingError(
                f"{who}: optimizer step {step} consumed {pairs:.2f} pairs by its own epoch counter "
                f"({accounting.train_rows} training rows), the benchmark's step is {expected}"
            )
    return expected


def from_alignkit_run(run_dir: Path) -> StepAccounting:
    """alignkit: ``args.json`` holds the resolved batch, accumulation, processes and the rows kept after
    encoding; ``logging.jsonl`` an ``epoch`` with every optimizer step's record."""
    args = json.loads((run_dir / "args.json").read_text())
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if line.strip()]
    return StepAccounting(
        train_rows=int(args["train_rows"]),
        per_device_batch=int(args["per_device_train_batch_size"]),
        gradient_accumulation=int(args["gradient_accumulation_steps"]),
        processes=int(args.get("world_size", 1)),
        epochs=[float(r["epoch"]) for r in records if "step_seconds" in r],
    )


def from_hf_trainer(record: dict) -> StepAccounting:
    """TRL and ms-swift (both transformers Trainers): the peer script records the trainer's resolved
    arguments, its training dataset's length and the epoch of every training log entry."""
    return StepAccounting(
        train_rows=int(record["train_rows"]),
        per_device_batch=int(record["per_device_train_batch_size"]),
        gradient_accumulation=int(record["gradient_accumulation_steps"]),
        processes=int(record["world_size"]),
        epochs=[float(e) for e in record["epochs"]],
    )


def hf_trainer_record(trainer) -> dict:
    """The accounting fields of a finished transformers Trainer (called inside the peers' environments)."""
    return {
        "train_rows": len(trainer.train_dataset),
        "per_device_train_batch_size": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "world_size": trainer.args.world_size,
        "epochs": [r["epoch"] for r in trainer.state.log_history if "loss" in r and "epoch" in r],
    }
