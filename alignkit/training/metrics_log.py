"""Metrics to the console (through the progress bar), to ``logging.jsonl`` and to the ``--report_to``
trackers (``alignkit.training.trackers``)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: Path, *, trackers: list, write_console, enabled: bool = True):
        """``trackers``: started accelerate trackers (TensorBoard, wandb, swanlab). ``enabled=False`` (every
        process but the main one of a distributed run) writes nothing."""
        self.path = run_dir / "logging.jsonl"
        self.enabled = enabled
        self.write_console = write_console
        self.trackers = trackers

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: round(v, 8) if isinstance(v, float) else v for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if scalars:
            for tracker in self.trackers:
                tracker.log(scalars, step=step)
        self.write_console(" ".join(f"{k}={_short(v)}" for k, v in record.items()))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


class RunningMean:
    """Averages each metric over the steps since the last log."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] += value
            self.counts[key] += 1

    def to_json(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    @classmethod
    def from_json(cls, data: dict) -> RunningMean:
        mean = cls()
        mean.sums.update(data.get("sums", {}))
        mean.counts.update(data.get("counts", {}))
        return mean

    def pop(self) -> dict[str, float]:
        means = {key: self.sums[key] / self.counts[key] for key in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
