"""The one explicit training loop for offline methods (SFT, DPO, ...), on accelerate.

An algorithm supplies ``loss(model, batch) -> (loss, metrics)``; this file owns everything else:
data order, gradient accumulation, clipping, the optimiser and schedule, logging, evaluation,
checkpoints and resume. Read it top to bottom: ``train()`` is the whole story.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from alignkit.checkpoint import (
    TrainerState,
    load_model_weights,
    read_trainer_state,
    restore_rng_state,
    save_checkpoint,
)
from alignkit.data.collate import Batch
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
) -> Path:
    """Train and return the final checkpoint's directory. ``*_rows`` are lists of (row_id, encoded)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    # accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, the demo, tests) may ask for another precision, so start from a clean state.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    model = model.to(accelerator.device)
    optimizer = make_optimizer(model, config)
    batches_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    steps = total_steps(batches_per_epoch, config)
    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * steps)
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    state = TrainerState()
    if config.resume_from_checkpoint:
        checkpoint = Path(config.resume_from_checkpoint)
        state = read_trainer_state(checkpoint)
        load_model_weights(accelerator.unwrap_model(model), checkpoint)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
        restore_rng_state(torch.load(checkpoint / "rng_state.pt", weights_only=False))
        logger.info("Resumed from %s at step %d (epoch %d)", checkpoint, state.global_step, state.epoch)

    log = MetricsLog(run_dir, tensorboard=config.tensorboard, write_console=tqdm.write)
    running = RunningMean()
    bar = tqdm(total=steps, initial=state.global_step, desc="train", dynamic_ncols=True)
    last_checkpoint: Path | None = None

    def save() -> Path:
        return save_checkpoint(
            run_dir,
            state,
            model=accelerator.unwrap_model(model),
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            args=args_for_checkpoint,
            save_total_limit=config.save_total_limit,
        )

    model.train()
    while state.global_step < steps:
        batches = epoch_batches(len(train_rows), config.batch_size, seed=config.seed, epoch=state.epoch, shuffle=config.shuffle)
        while state.batches_done_in_epoch < len(batches) and state.global_step < steps:
            group = batches[state.batches_done_in_epoch : state.batches_done_in_epoch + config.gradient_accumulation_steps]
            step_metrics = RunningMean()
            step_started = time.perf_counter()
            for indices in group:
                batch = collate([train_rows[i] for i in indices]).to(accelerator.device)
                with accelerator.autocast():
                    loss, metrics = algorithm.loss(model, batch)
                # Each micro-batch's mean loss weighs equally in the step, whatever the group's size.
                accelerator.backward(loss / len(group))
                step_metrics.add(metrics)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            state.global_step += 1
            state.batches_done_in_epoch += len(group)
            if state.batches_done_in_epoch >= len(batches):
                state.epoch += 1
                state.batches_done_in_epoch = 0
            running.add({**step_metrics.pop(), "grad_norm": float(grad_norm), "learning_rate": learning_rate,
                         "step_seconds": time.perf_counter() - step_started})
            bar.update(1)

            if state.global_step % config.logging_steps == 0 or state.global_step == steps:
                metrics = running.pop()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                log.log(state.global_step, {**metrics, "epoch": state.epoch + state.batches_done_in_epoch / len(batches)})
            if config.eval_steps and state.global_step % config.eval_steps == 0 and val_rows:
                log.log(state.global_step, evaluate(model, algorithm, val_rows, collate, config, accelerator))
            if state.global_step % config.save_steps == 0 and state.global_step < steps:
                last_checkpoint = save()

    bar.close()
    if val_rows:
        log.log(state.global_step, evaluate(model, algorithm, val_rows, collate, config, accelerator))
    if last_checkpoint is None or last_checkpoint.name != f"checkpoint-{state.global_step}":
        last_checkpoint = save()
    log.close()
    logger.info("last checkpoint: %s", last_checkpoint)
    return last_checkpoint


@torch.no_grad()
def evaluate(model, algorithm: Algorithm, rows: list, collate, config: LoopConfig, accelerator) -> dict[str, float]:
    """The algorithm's own metrics over the held-out rows, prefixed ``eval_`` as TRL names them."""
    model.eval()
    means = RunningMean()
    for start in range(0, len(rows), config.eval_batch_size):
        batch = collate(rows[start : start + config.eval_batch_size]).to(accelerator.device)
        with accelerator.autocast():
            _, metrics = algorithm.loss(model, batch)
        means.add(metrics)
    model.train()
    return {f"eval_{key}": value for key, value in means.pop().items()}
