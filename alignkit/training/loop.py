"""The offline step (SFT, DPO, KTO, CPO, SimPO, ORPO, RM, and vision-language rows): data order, gradient
accumulation over micro-batches and processes, the held-out evaluation.

An algorithm supplies ``loss(model, batch) -> (loss, metrics)``; the shell around the step (engines,
optimizer and schedule, run directory, resume, checkpoints, metrics, stop signals, non-finite steps) is
``alignkit.training.runner``, shared with the online loop. Read ``train()`` top to bottom.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Protocol

import torch

from alignkit.data.collate import Batch
from alignkit.data.order import DataOrder, total_steps
from alignkit.errors import AlignkitError
from alignkit.training.faults import fault_point
from alignkit.training.metrics_log import RunningMean
from alignkit.training.runner import LoopConfig, Runner

logger = logging.getLogger("alignkit")


class Algorithm(Protocol):
    loss_unit: str  # "examples" or "tokens": what a micro-batch's loss is a mean over (alignkit/algorithms)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


def train(
    *,
    model,
    tokenizer,
    algorithm: Algorithm,
    train_rows: list,
    val_rows: list,
    collate,
    config: LoopConfig,
    run_dir: Path,
    args_for_checkpoint: dict,
    row_sources: list | None = None,
) -> Path:
    """Train and return the final checkpoint's directory. ``*_rows`` are lists of (row_id, encoded);
    ``row_sources[row_id]`` (file and row) names rows in messages about non-finite steps."""
    runner = Runner(config, run_dir, args_for_checkpoint=args_for_checkpoint, tokenizer=tokenizer,
                    row_sources=row_sources)
    # Data parallel: every micro-batch is a global batch of batch_size rows per process, each process taking
    # its slice, so N processes × B rows follow the same data order as 1 process × N·B rows.
    global_batch = config.batch_size * runner.num_processes
    order = DataOrder.for_rows(train_rows, global_batch, config)
    if order.batches_per_epoch == 0:
        raise AlignkitError(f"--dataloader_drop_last: the {len(train_rows)} training rows do not fill one micro-batch "
                            f"of {global_batch} rows, so every batch would be dropped")
    steps = total_steps(order.batches_per_epoch, config)
    model = runner.prepare(model, optimizer_steps=steps)
    runner.resume(config.resume_from_checkpoint)
    state = runner.state

    def evaluate_held_out() -> dict[str, float]:
        return evaluate(model, algorithm, val_rows, collate, config, runner)

    model.train()
    with runner.running(steps, desc="train"):
        while state.global_step < steps and not runner.should_stop:
            epoch = state.epoch
            batches = order.epoch(epoch)
            # Each epoch has its own order: leave this loop at the epoch's end so the next one is drawn.
            while state.epoch == epoch and state.global_step < steps and not runner.should_stop:
                group = batches[
                    state.batches_done_in_epoch : state.batches_done_in_epoch + config.gradient_accumulation_steps
                ]
                step_started = time.perf_counter()
                step_metrics, problem = accumulate_gradients(model, algorithm, group, train_rows, collate, runner,
                                                             step=state.global_step + 1, batch_size=config.batch_size)
                learning_rate = runner.learning_rate()
                grad_norm, problem = runner.update(model.parameters(), problem, row_ids=[i for b in group for i in b])
                state.global_step += 1
                state.batches_done_in_epoch += len(group)
                epoch_end = state.batches_done_in_epoch >= len(batches)
                if epoch_end:
                    state.epoch += 1
                    state.batches_done_in_epoch = 0
                metrics = None
                if problem is None:
                    # step_seconds: wall time of the optimizer step (the one metric a resumed run cannot repeat).
                    metrics = {**step_metrics, "learning_rate": learning_rate,
                               "step_seconds": time.perf_counter() - step_started,
                               **({"grad_norm": grad_norm} if grad_norm is not None else {})}
                else:
                    runner.skip_nonfinite(problem)
                runner.end_step(metrics, postfix="loss",
                                log_extra={"epoch": state.epoch + state.batches_done_in_epoch / len(batches)},
                                evaluate=evaluate_held_out if val_rows else None, epoch_end=epoch_end)
        return runner.finish(evaluate_held_out if val_rows else None)


def accumulate_gradients(model, algorithm: Algorithm, group: list[list[int]], rows: list, collate, runner: Runner, *,
                         step: int, batch_size: int) -> tuple[dict[str, float], tuple[str, list[int]] | None]:
    """Forward and backward over the micro-batches of one optimizer step, gradients summed in place.

    ``group`` holds global micro-batches; this process takes its slice of each. Every micro-batch's loss is
    weighed by its share of the step's loss units (examples, or trained tokens for SFT) counted over all
    micro-batches and processes, so the step's loss and gradient are the mean over the whole step's rows
    however they are split: 1 process × 4 rows, 2 processes × 2 and 4 accumulated micro-batches × 1 agree.

    Returns the step's metrics (the same weighted mean, over all processes) and, if a loss was NaN/inf on
    any process, (what, row ids): the remaining micro-batches are not run, since the update will be skipped.
    """
    accelerator = runner.accelerator
    rank, world = runner.rank, runner.num_processes
    shards = [global_batch[rank * batch_size : (rank + 1) * batch_size] for global_batch in group]
    # A process left without rows (the epoch's last, short batch) still runs one, weighted 0: DDP needs every
    # process in every gradient all-reduce.
    batches = [collate([rows[i] for i in (shard or global_batch[:1])]) for shard, global_batch in zip(shards, group)]
    units = [loss_units(algorithm, batch) if shard else 0 for batch, shard in zip(batches, shards)]
    total = max(runner.sum_over_processes(torch.tensor([float(sum(units))])).item(), 1.0)
    step_metrics: dict[str, float] = {}
    for position, (batch, count) in enumerate(zip(batches, units)):
        batch = batch.to(accelerator.device)
        weight = count / total
        # Gradients are all-reduced once per step, on its last micro-batch.
        last = position == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = algorithm.loss(model, batch)
            if runner.any_process(not torch.isfinite(loss.detach()).item()):
                return step_metrics, (f"non-finite loss ({loss.item()})", batch.row_ids)
            # DDP averages gradients over processes; the weights already sum to 1 over all of them.
            accelerator.backward(loss * (weight * world))
        for key, value in metrics.items():
            step_metrics[key] = step_metrics.get(key, 0.0) + value * weight
        if position == 0:
            fault_point("micro_batch", step)
    keys = sorted(step_metrics)
    summed = runner.sum_over_processes(torch.tensor([step_metrics[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, summed.tolist())), None


def loss_units(algorithm: Algorithm, batch: Batch) -> int:
    """What the algorithm's micro-batch loss is a mean over: trained tokens for SFT's token-level
    cross-entropy (labels shifted by one, as in alignkit.models.logprobs), examples for everything else."""
    if algorithm.loss_unit == "tokens":
        return int((batch.labels[:, 1:] != -100).sum())
    return len(batch.row_ids)


@torch.no_grad()
def evaluate(model, algorithm: Algorithm, rows: list, collate, config: LoopConfig, runner: Runner) -> dict[str, float]:
    """The algorithm's own metrics over the held-out rows, prefixed ``eval_`` as TRL names them.

    The main process evaluates alone, on the unwrapped model (a DDP forward would wait for the others);
    the others wait and get an empty dict, which they never log."""
    means = RunningMean()
    accelerator = runner.accelerator
    if runner.main:
        unwrapped = runner.unwrapped
        unwrapped.eval()
        for start in range(0, len(rows), config.eval_batch_size):
            batch = collate(rows[start : start + config.eval_batch_size]).to(accelerator.device)
            with accelerator.autocast():
                _, metrics = algorithm.loss(unwrapped, batch)
            means.add(metrics)
        unwrapped.train()
    accelerator.wait_for_everyone()
    return {f"eval_{key}": value for key, value in means.pop().items()}


