"""The offline step (SFT, DPO, KTO, CPO, SimPO, ORPO, RM, and vision-language rows): data order, gradient
accumulation over micro-batches and processes, the held-out evaluation.

An algorithm supplies ``loss(model, batch) -> (loss, metrics)``; the shell around the step (engines,
optimizer and schedule, run directory, resume, checkpoints, metrics, stop signals, non-finite steps) is
``alignkit.training.runner``, shared with the online loop. Read ``train()`` top to bottom.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from alignkit.algorithms.kto import kl_micro_batches
from alignkit.data.collate import Batch, kl_rows
from alignkit.data.order import DataOrder, total_steps
from alignkit.data.packing import row_ids_of
from alignkit.errors import AlignkitError
from alignkit.training.faults import fault_point
from alignkit.training.runner import LoopConfig, Runner

logger = logging.getLogger("alignkit")


class Algorithm(Protocol):
    rows: str  # "sft", "preference", "unpaired" (KTO) or "classification" (alignkit/algorithms)
    loss_unit: str  # "examples" or "tokens": what a micro-batch's loss is a mean over

    # metrics: name → value, or (mean, count) for a mean over a subset of the rows (``add_metrics``)
    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict]: ...


def step_kl(algorithm: Algorithm) -> bool:
    """KTO with a KL term: its reference point z is a statistic of the whole step, computed before its losses."""
    return algorithm.rows == "unpaired" and algorithm.needs_kl



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
    held_out_evaluation: Callable[[Runner], dict[str, float]] | None = None,
) -> Path:
    """Train and return the final checkpoint's directory. ``*_rows`` are lists of (row_id, encoded);
    ``row_sources[row_id]`` (file and row) names rows in messages about non-finite steps.
    ``held_out_evaluation``: evaluates the held-out rows instead of the algorithm's loss (--predict_with_generate:
    ``alignkit.training.generated_eval``)."""
    runner = Runner(config, run_dir, args_for_checkpoint=args_for_checkpoint, tokenizer=tokenizer,
                    row_sources=row_sources)
    # Data parallel: every micro-batch is a global batch of batch_size rows per process, each process taking
    # its slice, so N processes × B rows follow the same data order as 1 process × N·B rows.
    global_batch = config.batch_size * runner.data_processes
    order = DataOrder.for_rows(train_rows, global_batch, config)
    if order.batches_per_epoch == 0:
        raise AlignkitError(f"--dataloader_drop_last: the {len(train_rows)} training rows do not fill one micro-batch "
                            f"of {global_batch} rows, so every batch would be dropped")
    steps = total_steps(order.batches_per_epoch, config)
    model = runner.prepare(model, optimizer_steps=steps)
    if getattr(algorithm, "draws_per_step", False):  # gkd's student samples inside the gather, as online rollouts
        algorithm = dataclasses.replace(algorithm, whole_student=runner.whole_parameters)
    runner.resume(config.resume_from_checkpoint)
    state = runner.state

    def evaluate_held_out() -> dict[str, float]:
        if held_out_evaluation is not None:
            return held_out_evaluation(runner)
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
                runner.begin_step()
                step_metrics, problem = accumulate_gradients(model, algorithm, group, train_rows, collate, runner,
                                                             step=state.global_step + 1, batch_size=config.batch_size)
                learning_rate = runner.learning_rate()
                step_rows = [r for b in group for i in b for r in row_ids_of(train_rows[i])]  # a pack names its rows
                grad_norm, problem = runner.update(model.parameters(), problem, row_ids=step_rows)
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
    KTO's reference point z is likewise one number for the whole step (``kl_micro_batches``), computed first.

    Returns the step's metrics (the same weighted mean, over all processes) and, if a loss was NaN/inf on
    any process, (what, row ids): the remaining micro-batches are not run, since the update will be skipped.
    """
    accelerator = runner.accelerator
    # A sequence-parallel group takes one slice of rows together (its processes split the tokens instead).
    rank, world = runner.data_rank, runner.num_processes
    shards = [global_batch[rank * batch_size : (rank + 1) * batch_size] for global_batch in group]
    # A process left without rows (the epoch's last, short batch) still runs one, weighted 0: DDP needs every
    # process in every gradient all-reduce.
    batches = [collate([rows[i] for i in (shard or global_batch[:1])]) for shard, global_batch in zip(shards, group)]
    units = [loss_units(algorithm, batch) if shard else 0 for batch, shard in zip(batches, shards)]
    total = max(runner.sum_over_processes(torch.tensor([float(sum(units))])).item(), 1.0)
    if step_kl(algorithm):  # KTO: z over the mismatched pairs of all the step's rows, all processes
        sums = kl_sums(model, algorithm, kl_micro_batches(group, rows, rank=rank, batch_size=batch_size), collate,
                       accelerator)
        algorithm = algorithm.for_step(*runner.sum_over_processes(torch.tensor(sums, dtype=torch.float64)).tolist())
    if getattr(algorithm, "draws_per_step", False):  # GKD: one data source per optimizer step (algorithms/gkd.py)
        algorithm = algorithm.at_step(step - 1)
    totals: dict[str, list[float]] = {}
    for position, (batch, count) in enumerate(zip(batches, units)):
        batch = batch.to(accelerator.device)
        weight = count / total
        # Gradients are all-reduced once per step, on its last micro-batch.
        last = position == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = algorithm.loss(model, batch)
            if runner.any_process(not torch.isfinite(loss.detach()).item()):
                return {}, (f"non-finite loss ({loss.item()})", batch.row_ids)
            # DDP averages gradients over processes; the weights already sum to 1 over all of them.
            accelerator.backward(loss * (weight * world))
        add_metrics(totals, metrics, weight)
        if position == 0:
            fault_point("micro_batch", step)
    keys = sorted(totals)
    summed = runner.sum_over_processes(torch.tensor([totals[k] for k in keys], dtype=torch.float64).reshape(-1, 2))
    return metric_means(dict(zip(keys, summed.tolist()))), None


def add_metrics(totals: dict[str, list[float]], metrics: dict, weight: float) -> None:
    """Add one micro-batch's metrics to running [Σ value·w, Σ w] totals: a plain value weighs ``weight`` (the
    micro-batch's share of the step), a (mean, count) pair, a mean over a subset of its rows (KTO's desirable
    ones), weighs its count, so that a subset's mean is right however the rows are split into micro-batches."""
    for key, value in metrics.items():
        mean, w = value if isinstance(value, tuple) else (value, weight)
        total = totals.setdefault(key, [0.0, 0.0])
        total[0] += mean * w
        total[1] += w


def metric_means(totals: dict[str, list[float]]) -> dict[str, float]:
    """Each metric's weighted mean (a subset no row fell in is left out), and TRL's ``rewards/margins``
    (chosen − rejected) where an algorithm reports both halves but not their margin."""
    means = {key: value / weight for key, (value, weight) in totals.items() if weight > 0}
    if "rewards/margins" not in totals and {"rewards/chosen", "rewards/rejected"} <= means.keys():
        means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
    return means


@torch.no_grad()
def kl_sums(model, algorithm, micro_batches: list[tuple[list, bool]], collate, accelerator) -> tuple[float, float]:
    """Σ and count of KTO's ``kl_terms`` over mismatched rows, one (items, counted) per micro-batch; a batch
    run only to keep processes in step is not counted."""
    total, count = 0.0, 0.0
    for items, counted in micro_batches:
        batch = collate(items).to(accelerator.device)
        with accelerator.autocast():
            terms = algorithm.kl_terms(model, batch)  # (B,)
        if counted:
            total, count = total + terms.double().sum().item(), count + len(terms)
    return total, count


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
    totals: dict[str, list[float]] = {}
    accelerator = runner.accelerator
    if runner.main:
        unwrapped = runner.unwrapped
        unwrapped.eval()
        if step_kl(algorithm):  # KTO: one z for the held-out set, from the mismatched pairs of all its rows
            mismatched = kl_rows(rows)
            size = config.eval_batch_size
            batches = [(mismatched[start : start + size], True) for start in range(0, len(rows), size)]
            algorithm = algorithm.for_step(*kl_sums(unwrapped, algorithm, batches, collate, accelerator))
        for start in range(0, len(rows), config.eval_batch_size):
            batch = collate(rows[start : start + config.eval_batch_size]).to(accelerator.device)
            with accelerator.autocast():
                _, metrics = algorithm.loss(unwrapped, batch)
            add_metrics(totals, metrics, 1.0)  # a mean of the batches' means, a subset's by its rows
        unwrapped.train()
    accelerator.wait_for_everyone()
    return {f"eval_{key}": value for key, value in metric_means(totals).items()}


