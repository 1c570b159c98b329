"""The online loop (PPO, GRPO): rollout → score → advantages → updates, then again with the new policy.

An algorithm (``grpo.GRPO``, ``ppo.PPO``) supplies ``experience(policy, prompts) -> (tensors, metrics,
samples)`` — sampling, scoring and advantages, without grad — and ``loss(policy, mini_batch)``; this file
owns the rest: prompt order, the update epochs and mini-batches, clipping, optimiser and schedule,
logging, sample completions, evaluation, checkpoints and resume (shared with the offline loop).

One *step* (``global_step``, ``--max_steps``, ``--save_steps``, ``--logging_steps``) is one rollout and
the updates on it; ``Schedule`` says how many prompts, sequences and optimizer steps that is.
"""

from __future__ import annotations

import json
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
from alignkit.errors import AlignkitError
from alignkit.metrics_log import MetricsLog, RunningMean
from alignkit.online.rollout import EncodedPrompt
from alignkit.trainer import LoopConfig, epoch_batches, make_optimizer

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class Schedule:
    prompts_per_step: int  # prompts sampled per step (all collect steps together)
    sequences_per_step: int  # completions per step: prompts × num_generations
    minibatch_size: int  # completions per optimizer step
    micro_batch_size: int  # completions per forward/backward (gradients accumulate up to a mini-batch)
    update_epochs: int  # passes over each rollout (PPO --num_ppo_epochs, GRPO --num_iterations)
    steps: int

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.update_epochs * math.ceil(self.sequences_per_step / self.minibatch_size)


def make_schedule(*, num_prompts: int, num_generations: int, per_device_train_batch_size: int,
                  gradient_accumulation_steps: int, num_mini_batches: int, experience_batch_size: int | None,
                  num_collect_steps: int, train_batch_size: int | None, update_epochs: int, max_steps: int,
                  num_episodes: int | None, num_train_epochs: float) -> Schedule:
    """How much each step samples and trains, from ms-swift/TRL's and ColossalChat's flags.

    ======================  ==========================================================================
    completions / step      ``--experience_batch_size`` × ``--num_collect_steps`` × G (prompts × group);
                            without --experience_batch_size, TRL's rollout size: batch size ×
                            gradient_accumulation_steps × num_mini_batches completions
    mini-batch              ``--train_batch_size`` completions, else completions / ``--num_mini_batches``;
                            one optimizer step each
    micro-batch             ``--per_device_train_batch_size`` completions
    steps                   ``--max_steps``, else ``--num_episodes``, else epochs over the prompts
    ======================  ==========================================================================
    """
    for name, value in (("--per_device_train_batch_size", per_device_train_batch_size),
                        ("--gradient_accumulation_steps", gradient_accumulation_steps),
                        ("--num_mini_batches", num_mini_batches), ("--num_collect_steps", num_collect_steps),
                        ("--num_generations", num_generations), ("update epochs", update_epochs)):
        if value < 1:
            raise AlignkitError(f"{name} must be at least 1, got {value}")
    if experience_batch_size is None:
        completions = per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches
        if completions % num_generations:
            raise AlignkitError(
                f"a rollout of --per_device_train_batch_size × --gradient_accumulation_steps × --num_mini_batches = "
                f"{completions} completions cannot hold whole groups of --num_generations {num_generations}; make it "
                f"a multiple, or set --experience_batch_size (prompts per rollout)")
        experience_batch_size = completions // num_generations
    elif experience_batch_size < 1:
        raise AlignkitError(f"--experience_batch_size must be at least 1, got {experience_batch_size}")
    prompts = experience_batch_size * num_collect_steps
    sequences = prompts * num_generations
    if train_batch_size is not None:
        minibatch = train_batch_size
    else:
        if sequences % num_mini_batches:
            raise AlignkitError(f"{sequences} completions per step do not split into --num_mini_batches {num_mini_batches}")
        minibatch = sequences // num_mini_batches
    if not 1 <= minibatch <= sequences:
        raise AlignkitError(f"--train_batch_size must be between 1 and the {sequences} completions of a step")
    if max_steps > 0 and num_episodes is not None and num_episodes != max_steps:
        raise AlignkitError(f"--max_steps {max_steps} and --num_episodes {num_episodes} both set the number of steps")
    if max_steps > 0:
        steps = max_steps
    elif num_episodes is not None:
        steps = num_episodes
    else:
        steps = max(1, math.ceil(num_train_epochs * num_prompts / prompts))
    return Schedule(prompts, sequences, minibatch, min(per_device_train_batch_size, minibatch), update_epochs, steps)


def select(experience: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``index`` of an experience, with columns that are padding in every picked row cut off."""
    batch = {key: value[index] for key, value in experience.items()}
    prompt_keep = int(batch["prompt_mask"].sum(-1).max())
    completion_length = batch["completion_mask"].shape[1]
    completion_keep = max(1, int(batch["completion_mask"].sum(-1).max()))
    for key, value in batch.items():
        if key.startswith("prompt_"):
            batch[key] = value[:, -prompt_keep:]  # prompts are left-padded
        elif value.ndim == 2 and value.shape[1] == completion_length:
            batch[key] = value[:, :completion_keep]  # completions are right-padded
    return batch


class OnlineAlgorithm(Protocol):
    generator: object  # prompt ids → raw completion ids; ``sync_weights()`` after each update

    def trainable_modules(self) -> list[torch.nn.Module]: ...  # trained besides the policy (PPO's value model)

    def frozen_modules(self) -> list[torch.nn.Module]: ...  # reward models, frozen reference

    def experience(self, policy, prompts: list[EncodedPrompt]) -> tuple[dict[str, torch.Tensor], dict, list[dict]]: ...

    def loss(self, policy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, policy, prompts: list[EncodedPrompt]) -> dict[str, float]: ...

    def checkpoint_model(self, policy): ...  # what save_checkpoint saves (has save_pretrained)

    def load_trained(self, checkpoint: Path) -> None: ...  # resume what trainable_modules() hold


def disable_dropout(model) -> None:
    """Rollout log-probs and training log-probs must come from the same function, or the ratio π/π_old is
    noise even before any update (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def train_online(*, policy, tokenizer, algorithm: OnlineAlgorithm, prompts: list[EncodedPrompt], val_prompts: list[EncodedPrompt],
                 schedule: Schedule, config: LoopConfig, run_dir: Path, args_for_checkpoint: dict) -> Path:
    """Train and return the final checkpoint's directory."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    AcceleratorState._reset_state()  # see trainer.train: a second run in one process may change precision
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    policy.to(accelerator.device)
    for module in algorithm.trainable_modules() + algorithm.frozen_modules():
        module.to(accelerator.device)
    trained = torch.nn.ModuleList([policy, *algorithm.trainable_modules()])
    optimizer = accelerator.prepare(make_optimizer(trained, config))
    optimizer_steps = schedule.steps * schedule.optimizer_steps_per_step
    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * optimizer_steps)
    kind = "constant_with_warmup" if config.lr_scheduler_type == "constant" and warmup else config.lr_scheduler_type
    scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=optimizer_steps)
    logger.info("Online schedule: %d steps of %d prompts (%d completions), %d optimizer steps each "
                "(mini-batches of %d, micro-batches of %d, %d update epoch(s))", schedule.steps,
                schedule.prompts_per_step, schedule.sequences_per_step, schedule.optimizer_steps_per_step,
                schedule.minibatch_size, schedule.micro_batch_size, schedule.update_epochs)

    state = TrainerState()
    if config.resume_from_checkpoint:
        checkpoint = Path(config.resume_from_checkpoint)
        state = read_trainer_state(checkpoint)
        load_model_weights(policy, checkpoint)
        algorithm.load_trained(checkpoint)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
        restore_rng_state(torch.load(checkpoint / "rng_state.pt", weights_only=False))
        algorithm.generator.sync_weights()
        logger.info("Resumed from %s at step %d (epoch %d)", checkpoint, state.global_step, state.epoch)

    log = MetricsLog(run_dir, tensorboard=config.tensorboard, write_console=tqdm.write)
    running = RunningMean()
    bar = tqdm(total=schedule.steps, initial=state.global_step, desc=args_for_checkpoint["algorithm"], dynamic_ncols=True)
    last_checkpoint: Path | None = None
    saved = algorithm.checkpoint_model(policy)

    def save() -> Path:
        return save_checkpoint(run_dir, state, model=saved, tokenizer=tokenizer, optimizer=optimizer,
                               scheduler=scheduler, args=args_for_checkpoint, save_total_limit=config.save_total_limit)

    while state.global_step < schedule.steps:
        batches = epoch_batches(len(prompts), schedule.prompts_per_step, seed=config.seed, epoch=state.epoch,
                                shuffle=config.shuffle)
        while state.batches_done_in_epoch < len(batches) and state.global_step < schedule.steps:
            started = time.perf_counter()
            policy.eval()  # generate() keeps its KV cache only outside training mode with gradient checkpointing
            with accelerator.autocast():
                experience, rollout_metrics, samples = algorithm.experience(
                    policy, [prompts[i] for i in batches[state.batches_done_in_epoch]])
            policy.train()
            rollout_seconds = time.perf_counter() - started
            update_metrics = RunningMean()
            for _ in range(schedule.update_epochs):
                update_metrics.add(update(policy, trained, algorithm, experience, schedule, config, accelerator,
                                          optimizer, scheduler))
            algorithm.generator.sync_weights()

            state.global_step += 1
            state.batches_done_in_epoch += 1
            if state.batches_done_in_epoch >= len(batches):
                state.epoch += 1
                state.batches_done_in_epoch = 0
            running.add({**rollout_metrics, **update_metrics.pop(), "time/rollout_s": rollout_seconds,
                         "time/update_s": time.perf_counter() - started - rollout_seconds})
            bar.update(1)

            if state.global_step % config.logging_steps == 0 or state.global_step == schedule.steps:
                metrics = running.pop()
                bar.set_postfix(reward=f"{metrics['reward']:.3f}")
                log.log(state.global_step, {**metrics, "episode": state.global_step * schedule.prompts_per_step})
                log_samples(run_dir, state.global_step, samples)
            if config.eval_steps and state.global_step % config.eval_steps == 0 and val_prompts:
                log.log(state.global_step, evaluate(policy, algorithm, val_prompts, accelerator))
            if state.global_step % config.save_steps == 0 and state.global_step < schedule.steps:
                last_checkpoint = save()

    bar.close()
    if val_prompts and not (config.eval_steps and state.global_step % config.eval_steps == 0):
        log.log(state.global_step, evaluate(policy, algorithm, val_prompts, accelerator))
    if last_checkpoint is None or last_checkpoint.name != f"checkpoint-{state.global_step}":
        last_checkpoint = save()
    log.close()
    logger.info("last checkpoint: %s", last_checkpoint)
    return last_checkpoint


def update(policy, trained, algorithm, experience, schedule: Schedule, config: LoopConfig, accelerator, optimizer,
           scheduler) -> dict[str, float]:
    """One pass over a rollout: shuffled mini-batches, one optimizer step each. Returns mean metrics."""
    metrics = RunningMean()
    count = experience["completion_ids"].shape[0]
    order = torch.randperm(count)
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    for start in range(0, count, schedule.minibatch_size):
        # Sorted within the mini-batch (same gradient): a prompt's completions stay adjacent, so a micro-batch
        # holds whole groups whose prompt a shared-prefix layout runs once.
        minibatch = order[start : start + schedule.minibatch_size].sort().values
        for micro_start in range(0, len(minibatch), schedule.micro_batch_size):
            micro = minibatch[micro_start : micro_start + schedule.micro_batch_size]
            batch = select(experience, micro.to(experience["completion_ids"].device))
            with accelerator.autocast():
                loss, step_metrics = algorithm.loss(policy, batch)
            # Micro-batches weigh by their share of the mini-batch's completions.
            accelerator.backward(loss * len(micro) / len(minibatch))
            metrics.add(step_metrics)
        grad_norm = accelerator.clip_grad_norm_(trained.parameters(), max_norm)
        metrics.add({"grad_norm": float(grad_norm), "learning_rate": scheduler.get_last_lr()[0]})
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return metrics.pop()


def evaluate(policy, algorithm, val_prompts: list[EncodedPrompt], accelerator) -> dict[str, float]:
    policy.eval()
    with accelerator.autocast():
        metrics = algorithm.evaluate(policy, val_prompts)
    policy.train()
    return metrics


def log_samples(run_dir: Path, step: int, samples: list[dict]) -> None:
    """Every logged step's completions go to ``completions.jsonl``; the first is shown on the console."""
    with (run_dir / "completions.jsonl").open("a") as f:
        for sample in samples:
            f.write(json.dumps({"step": step, **sample}) + "\n")
    if samples:
        first = samples[0]
        tqdm.write(f"[sample] {first['prompt']!r} -> {first['completion']!r}")
