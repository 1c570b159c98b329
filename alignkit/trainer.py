"""The one explicit training loop for offline methods (SFT, DPO, ...), on accelerate.

An algorithm supplies ``loss(model, batch) -> (loss, metrics)``; this file owns everything else:
data order, gradient accumulation, clipping, the optimiser and schedule, logging, evaluation,
checkpoints and resume, skipping non-finite steps, stopping cleanly on SIGINT/SIGTERM. Read it top to
bottom: ``train()`` is the whole story.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from alignkit.algorithms.sft import SFT
from alignkit.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from alignkit.data.collate import Batch
from alignkit.device_map import place
from alignkit.errors import AlignkitError, TrainingInterrupted
from alignkit.faults import fault_point
from alignkit.interrupts import StopRequests
from alignkit.metrics_log import MetricsLog, RunningMean

logger = logging.getLogger("alignkit")


class Algorithm(Protocol):
    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class LoopConfig:
    num_train_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 1
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    eval_steps: int | None = None
    save_steps: int = 500
    save_total_limit: int | None = None
    seed: int = 42
    shuffle: bool = True
    mixed_precision: str = "no"  # no | bf16 | fp16
    tensorboard: bool = True
    resume_from_checkpoint: str | None = None
    max_nonfinite_steps: int = 10
    engine: dict | None = None  # Accelerator keyword arguments from alignkit.engines (DeepSpeed / FSDP plugins)


def epoch_batches(num_rows: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch. The order depends only on (seed, epoch), so a resumed
    run can rebuild it exactly and skip what was already seen."""
    if shuffle:
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(num_rows))
    return [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]


def make_optimizer(model, config: LoopConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # Biases and norm scales are 1-D; weight decay on them only hurts (as in transformers' Trainer).
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": config.learning_rate, "betas": config.adam_betas, "eps": config.adam_epsilon}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels need a supported device and dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def total_steps(num_batches: int, config: LoopConfig) -> int:
    if config.max_steps > 0:
        return config.max_steps
    steps_per_epoch = math.ceil(num_batches / config.gradient_accumulation_steps)
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch))


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
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    # accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, the demo, tests) may ask for another precision, so start from a clean state.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                              **(config.engine or {}))
    main = accelerator.is_main_process
    torch.manual_seed(config.seed)
    model = place(model, accelerator.device)  # a model split by --device_map stays split
    optimizer = make_optimizer(model, config)
    # Data parallel: every micro-batch is a global batch of batch_size rows per process, each process taking
    # its slice, so N processes × B rows follow the same data order as 1 process × N·B rows.
    global_batch = config.batch_size * accelerator.num_processes
    batches_per_epoch = math.ceil(len(train_rows) / global_batch)
    steps = total_steps(batches_per_epoch, config)
    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * steps)
    # transformers' "constant" ignores warm-up; users who ask for warm-up with it mean this one.
    schedule = "constant_with_warmup" if config.lr_scheduler_type == "constant" and warmup else config.lr_scheduler_type
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = TrainerState()
    last_checkpoint: Path | None = None
    if config.resume_from_checkpoint:
        checkpoint = Path(config.resume_from_checkpoint)
        state = load_checkpoint(checkpoint, model=accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler)
        if checkpoint.parent.resolve() == run_dir.resolve():
            last_checkpoint = checkpoint  # never written again
        logger.info("Resumed from %s at step %d (epoch %d, micro-batch %d)", checkpoint, state.global_step,
                    state.epoch, state.batches_done_in_epoch)

    # Only the main process logs, shows progress and writes checkpoints; every process loaded the checkpoint.
    log = MetricsLog(run_dir, tensorboard=config.tensorboard and main, write_console=tqdm.write,
                     purge_step=state.global_step + 1 if config.resume_from_checkpoint else None, enabled=main)
    running = RunningMean.from_json(state.running_metrics)
    bar = tqdm(total=steps, initial=state.global_step, desc="train", dynamic_ncols=True, disable=not main)

    def save() -> Path:
        state.running_metrics = running.to_json()
        accelerator.wait_for_everyone()
        path = run_dir / f"checkpoint-{state.global_step}"
        if main:
            path = save_checkpoint(
                run_dir,
                state,
                model=accelerator.unwrap_model(model),
                tokenizer=tokenizer,
                optimizer=optimizer,
                scheduler=scheduler,
                args=args_for_checkpoint,
                save_total_limit=config.save_total_limit,
            )
        accelerator.wait_for_everyone()
        return path

    model.train()
    with StopRequests() as stop:
        while state.global_step < steps:
            epoch = state.epoch
            batches = epoch_batches(len(train_rows), global_batch, seed=config.seed, epoch=epoch, shuffle=config.shuffle)
            # Each epoch has its own order: leave this loop at the epoch's end so the next one is drawn.
            while state.epoch == epoch and state.global_step < steps:
                group = batches[state.batches_done_in_epoch : state.batches_done_in_epoch + config.gradient_accumulation_steps]
                step_started = time.perf_counter()
                step_metrics, problem = accumulate_gradients(model, algorithm, group, train_rows, collate, accelerator,
                                                             step=state.global_step + 1, batch_size=config.batch_size)
                grad_norm = None
                if problem is None:
                    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    # fp16's gradient scaler skips overflowing steps itself (and lowers its scale).
                    if not torch.isfinite(grad_norm) and accelerator.scaler is None:
                        problem = (f"non-finite gradient norm ({float(grad_norm)})", [i for b in group for i in b])
                learning_rate = scheduler.get_last_lr()[0]
                if problem is None:
                    optimizer.step()
                    state.nonfinite_in_a_row = 0
                with warnings.catch_warnings():
                    # The schedule follows the step count even when the first update was skipped.
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.global_step += 1
                state.batches_done_in_epoch += len(group)
                if state.batches_done_in_epoch >= len(batches):
                    state.epoch += 1
                    state.batches_done_in_epoch = 0
                if problem is None:
                    # step_seconds: wall time of the optimizer step (the one metric a resumed run cannot repeat).
                    running.add({**step_metrics, "grad_norm": float(grad_norm), "learning_rate": learning_rate,
                                 "step_seconds": time.perf_counter() - step_started})
                else:
                    skip_nonfinite_step(state, problem, log, row_sources, config.max_nonfinite_steps, last_checkpoint)
                bar.update(1)

                if state.global_step % config.logging_steps == 0 or state.global_step == steps:
                    metrics = running.pop()
                    if "loss" in metrics:
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                    if state.nonfinite_steps:
                        metrics["nonfinite_steps"] = state.nonfinite_steps
                    log.log(state.global_step, {**metrics, "epoch": state.epoch + state.batches_done_in_epoch / len(batches)})
                if config.eval_steps and state.global_step % config.eval_steps == 0 and val_rows:
                    log.log(state.global_step, evaluate(model, algorithm, val_rows, collate, config, accelerator))
                if state.global_step % config.save_steps == 0 and state.global_step < steps:
                    last_checkpoint = save()
                if any_process(bool(stop.requested), accelerator):
                    if last_checkpoint is None or last_checkpoint.name != f"checkpoint-{state.global_step}":
                        last_checkpoint = save()
                    bar.close()
                    log.close()
                    # Another process was signalled (a launcher forwards signals to all, but not always at once).
                    raise TrainingInterrupted(stop.requested or int(signal.SIGTERM), last_checkpoint)

        # A signal from here on lets the run finish: the final evaluation and checkpoint are all that is left.
        bar.close()
        if val_rows:
            log.log(state.global_step, evaluate(model, algorithm, val_rows, collate, config, accelerator))
        if last_checkpoint is None or last_checkpoint.name != f"checkpoint-{state.global_step}":
            last_checkpoint = save()
        log.close()
    logger.info("last checkpoint: %s", last_checkpoint)
    return last_checkpoint


def accumulate_gradients(model, algorithm: Algorithm, group: list[list[int]], rows: list, collate, accelerator, *,
                         step: int, batch_size: int) -> tuple[dict[str, float], tuple[str, list[int]] | None]:
    """Forward and backward over the micro-batches of one optimizer step, gradients summed in place.

    ``group`` holds global micro-batches; this process takes its slice of each. Every micro-batch's loss is
    weighed by its share of the step's loss units (examples, or trained tokens for SFT) counted over all
    micro-batches and processes, so the step's loss and gradient are the mean over the whole step's rows
    however they are split: 1 process × 4 rows, 2 processes × 2 and 4 accumulated micro-batches × 1 agree.

    Returns the step's metrics (the same weighted mean, over all processes) and, if a loss was NaN/inf on
    any process, (what, row ids): the remaining micro-batches are not run, since the update will be skipped.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    shards = [global_batch[rank * batch_size : (rank + 1) * batch_size] for global_batch in group]
    # A process left without rows (the epoch's last, short batch) still runs one, weighted 0: DDP needs every
    # process in every gradient all-reduce.
    batches = [collate([rows[i] for i in (shard or global_batch[:1])]) for shard, global_batch in zip(shards, group)]
    units = [loss_units(algorithm, batch) if shard else 0 for batch, shard in zip(batches, shards)]
    total = max(sum_over_processes(torch.tensor([float(sum(units))]), accelerator).item(), 1.0)
    step_metrics: dict[str, float] = {}
    for position, (batch, count) in enumerate(zip(batches, units)):
        batch = batch.to(accelerator.device)
        weight = count / total
        # Gradients are all-reduced once per step, on its last micro-batch.
        last = position == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = algorithm.loss(model, batch)
            if any_process(not torch.isfinite(loss.detach()).item(), accelerator):
                return step_metrics, (f"non-finite loss ({loss.item()})", batch.row_ids)
            # DDP averages gradients over processes; the weights already sum to 1 over all of them.
            accelerator.backward(loss * (weight * world))
        for key, value in metrics.items():
            step_metrics[key] = step_metrics.get(key, 0.0) + value * weight
        if position == 0:
            fault_point("micro_batch", step)
    keys = sorted(step_metrics)
    summed = sum_over_processes(torch.tensor([step_metrics[k] for k in keys], dtype=torch.float64), accelerator)
    return dict(zip(keys, summed.tolist())), None


def loss_units(algorithm: Algorithm, batch: Batch) -> int:
    """What the algorithm's micro-batch loss is a mean over: trained tokens for SFT's token-level
    cross-entropy (labels shifted by one, as in alignkit.logprobs), examples for everything else."""
    if isinstance(algorithm, SFT):
        return int((batch.labels[:, 1:] != -100).sum())
    return len(batch.row_ids)


def sum_over_processes(values: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values.to(accelerator.device), reduction="sum").cpu()


def any_process(flag: bool, accelerator) -> bool:
    """True on every process when ``flag`` is true on one, so all take the same branch (or they hang)."""
    return bool(sum_over_processes(torch.tensor([float(flag)]), accelerator).item() > 0)


def skip_nonfinite_step(state: TrainerState, problem: tuple[str, list[int]], log: MetricsLog, row_sources: list | None,
                        max_in_a_row: int, last_checkpoint: Path | None) -> None:
    """Count and log a step whose update was skipped; stop the run after ``max_in_a_row`` in a row.

    One bad row (an overflow, an empty answer in a custom loss) should cost one step, not the run; a model
    that produces NaN every step should stop the run with a message rather than burn the budget.
    """
    what, row_ids = problem
    state.nonfinite_steps += 1
    state.nonfinite_in_a_row += 1
    names = [f"{i} ({row_sources[i].file} row {row_sources[i].row})" if row_sources and row_sources[i] else str(i)
             for i in row_ids]
    logger.warning("step %d: %s; update skipped (%d in a row, %d in total). Rows: %s", state.global_step, what,
                   state.nonfinite_in_a_row, state.nonfinite_steps, ", ".join(names))
    log.log(state.global_step, {"nonfinite": what, "row_ids": list(row_ids), "nonfinite_steps": state.nonfinite_steps})
    if state.nonfinite_in_a_row >= max_in_a_row:
        log.close()
        raise AlignkitError(
            f"stopped at step {state.global_step}: {state.nonfinite_in_a_row} optimizer steps in a row had a non-finite "
            f"loss or gradient (--max_nonfinite_steps {max_in_a_row}); their updates were skipped, so the weights stay "
            f"finite. Last checkpoint: {last_checkpoint or 'none'}. Lower --learning_rate or check the rows named above."
        )


@torch.no_grad()
def evaluate(model, algorithm: Algorithm, rows: list, collate, config: LoopConfig, accelerator) -> dict[str, float]:
    """The algorithm's own metrics over the held-out rows, prefixed ``eval_`` as TRL names them.

    The main process evaluates alone, on the unwrapped model (a DDP forward would wait for the others);
    the others wait and get an empty dict, which they never log."""
    means = RunningMean()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        for start in range(0, len(rows), config.eval_batch_size):
            batch = collate(rows[start : start + config.eval_batch_size]).to(accelerator.device)
            with accelerator.autocast():
                _, metrics = algorithm.loss(unwrapped, batch)
            means.add(metrics)
        unwrapped.train()
    accelerator.wait_for_everyone()
    return {f"eval_{key}": value for key, value in means.pop().items()}
