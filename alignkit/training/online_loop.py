"""The online loop (PPO, GRPO): rollout → score → advantages → updates, then again with the new policy.

An algorithm (``grpo.GRPO``, ``ppo.PPO``) supplies ``experience(policy, prompts) -> (tensors, metrics,
samples)`` — sampling, scoring and advantages, without grad — and ``loss(model, mini_batch)``; this file
owns the step: prompt order and its share per process, the per-prompt sampling seeds, the update epochs and
mini-batches. The shell (engines, optimizer, run directory, resume, checkpoints, metrics, stop signals,
non-finite updates) is ``alignkit.training.runner``, shared with the offline loop.

One *step* (``global_step``, ``--max_steps``, ``--save_steps``, ``--logging_steps``) is one rollout and
the updates on it; ``Schedule`` says how many prompts, sequences and optimizer steps that is.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from alignkit.algorithms.rollout import EncodedPrompt, present
from alignkit.data.order import DataOrder
from alignkit.errors import AlignkitError
from alignkit.training.faults import fault_point
from alignkit.training.metrics_log import RunningMean
from alignkit.training.runner import LoopConfig, Runner
from alignkit.training.temperature import TemperatureAnnealing

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class Schedule:
    prompts_per_step: int  # prompts sampled per step (all collect steps together)
    sequences_per_step: int  # completions per step: prompts × num_generations
    minibatch_size: int  # completions per optimizer step
    micro_batch_size: int  # completions per forward/backward (gradients accumulate up to a mini-batch)
    update_epochs: int  # passes over each rollout (PPO --num_ppo_epochs, GRPO --num_iterations)
    steps: int
    # True: prompts_per_step counts the prompts of the whole step, which every process receives; each samples its
    # own slice of their completions (ms-swift's GRPO groups split across processes; see generation_batch.py).
    shared_prompts: bool = False

    @property
    def optimizer_steps_per_step(self) -> int:
        return self.update_epochs * math.ceil(self.sequences_per_step / self.minibatch_size)


def make_schedule(*, num_prompts: int, num_generations: int, per_device_train_batch_size: int,
                  gradient_accumulation_steps: int, num_mini_batches: int, experience_batch_size: int | None,
                  num_collect_steps: int, train_batch_size: int | None, update_epochs: int, max_steps: int,
                  num_episodes: int | None, num_train_epochs: float, drop_last: bool = False) -> Schedule:
    """How much each step samples and trains, from ms-swift/TRL's and ColossalChat's flags.

    ======================  ==========================================================================
    completions / step      ``--experience_batch_size`` × ``--num_collect_steps`` × G (prompts × group);
                            without --experience_batch_size, TRL's rollout size: batch size ×
                            gradient_accumulation_steps × num_mini_batches completions
    mini-batch              ``--train_batch_size`` completions, else completions / ``--num_mini_batches``;
                            one optimizer step each
    micro-batch             ``--per_device_train_batch_size`` completions
    steps                   ``--max_steps``, else ``--num_episodes``, else epochs over the prompts (whole
                            steps only with ``--dataloader_drop_last``)
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
            raise AlignkitError(
                f"{sequences} completions per step do not split into --num_mini_batches {num_mini_batches}"
            )
        minibatch = sequences // num_mini_batches
    if not 1 <= minibatch <= sequences:
        raise AlignkitError(f"--train_batch_size must be between 1 and the {sequences} completions of a step")
    if max_steps > 0 and num_episodes is not None and num_episodes != max_steps:
        raise AlignkitError(f"--max_steps {max_steps} and --num_episodes {num_episodes} both set the number of steps")
    if max_steps > 0:
        steps = max_steps
    elif num_episodes is not None:
        steps = num_episodes
    elif drop_last:
        if num_prompts < prompts:
            raise AlignkitError(f"--dataloader_drop_last: the {num_prompts} prompts do not fill one step of {prompts}")
        steps = max(1, math.ceil(num_train_epochs * (num_prompts // prompts)))
    else:
        steps = max(1, math.ceil(num_train_epochs * num_prompts / prompts))
    return Schedule(prompts, sequences, minibatch, min(per_device_train_batch_size, minibatch), update_epochs, steps)


def select(experience: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``index`` of an experience, with columns that are padding in every picked row cut off."""
    batch = {key: value[index] for key, value in experience.items()}
    prompt_keep = int(batch["prompt_mask"].sum(-1).max())
    completion_length = batch["completion_mask"].shape[1]
    completion_keep = max(1, int(present(batch).sum(-1).max()))
    for key, value in batch.items():
        if key.startswith("prompt_"):
            batch[key] = value[:, -prompt_keep:]  # prompts are left-padded
        elif value.ndim == 2 and value.shape[1] == completion_length:
            batch[key] = value[:, :completion_keep]  # completions are right-padded
    return batch


class OnlineAlgorithm(Protocol):
    generator: object  # prompt ids → raw completion ids; ``sync_weights()`` after each update
    temperature: float  # of sampling and of the log-probs (the generator's own too); annealing sets both

    def trained_model(self, policy) -> torch.nn.Module: ...  # what is optimised: the policy (+ PPO's value model)

    def frozen_modules(self) -> list[torch.nn.Module]: ...  # reward models, frozen reference

    def experience(self, policy, prompts: list[EncodedPrompt], *, seeds: list[int] | None = None,
                   sum_all=None) -> tuple[dict[str, torch.Tensor], dict, list[dict]]: ...

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, policy, prompts: list[EncodedPrompt]) -> dict[str, float]: ...

    def load_trained(self, checkpoint: Path) -> None: ...  # resume what trained_model() holds besides the policy


def step_prompts(order: DataOrder, epoch: int) -> list[list[int]]:
    """The prompt indices of each step of one epoch, ``order.batch_size`` (prompts per step × processes) each,
    in ``order`` (shuffled, or grouped by length). The epoch's last step, if short, is filled from the start
    of the epoch's order, so every step samples as many prompts and every process gets its share; with
    --dataloader_drop_last (``order.drop_last``) it is dropped instead."""
    steps = order.epoch(epoch)
    flat = [i for step in steps for i in step]
    while steps and len(steps[-1]) < order.batch_size:
        steps[-1] += flat[: order.batch_size - len(steps[-1])]
    return steps


def sampling_seeds(run_seed: int, step: int, prompt_indices: list[int]) -> list[int]:
    """One seed per prompt of a step, from the run's seed, the step and the prompt's index alone (not the
    process or the batch it lands in), so N processes × B prompts sample what 1 process × N·B samples."""
    return [int.from_bytes(hashlib.blake2b(f"{run_seed}:{step}:{index}".encode(), digest_size=8).digest(), "little")
            >> 1 for index in prompt_indices]


def train_online(
    *,
    policy,
    tokenizer,
    algorithm: OnlineAlgorithm,
    prompts: list[EncodedPrompt],
    val_prompts: list[EncodedPrompt],
    schedule: Schedule,
    config: LoopConfig,
    run_dir: Path,
    args_for_checkpoint: dict,
    annealing: TemperatureAnnealing | None = None,
) -> Path:
    """Train and return the final checkpoint's directory. With N processes each step samples N × the
    schedule's prompts, each process its own share; gradients are averaged by the sharding engine.
    ``annealing``: the rollout temperature of each step, from the optimizer steps taken before it."""
    runner = Runner(config, run_dir, args_for_checkpoint=args_for_checkpoint, tokenizer=tokenizer)
    for module in algorithm.frozen_modules():
        module.to(runner.accelerator.device)
    policy.to(runner.accelerator.device)
    model = runner.prepare(algorithm.trained_model(policy),
                           optimizer_steps=schedule.steps * schedule.optimizer_steps_per_step)
    runner.resume(config.resume_from_checkpoint, weights=policy, load_more=algorithm.load_trained)
    if config.resume_from_checkpoint:
        with runner.whole_parameters():
            algorithm.generator.sync_weights()
    logger.info("Online schedule: %d steps of %d prompts (%d completions) per process, %d process(es), %d optimizer "
                "steps each (mini-batches of %d, micro-batches of %d, %d update epoch(s))", schedule.steps,
                schedule.prompts_per_step, schedule.sequences_per_step, runner.num_processes,
                schedule.optimizer_steps_per_step, schedule.minibatch_size, schedule.micro_batch_size,
                schedule.update_epochs)
    state, rank, share = runner.state, runner.rank, schedule.prompts_per_step
    global_batch = share if schedule.shared_prompts else share * runner.num_processes
    order = DataOrder.for_rows([p.ids for p in prompts], global_batch, config)

    def sum_all(values: torch.Tensor) -> torch.Tensor:
        return runner.sum_over_processes(values).to(values.device)

    def evaluate_held_out() -> dict[str, float]:
        """The main process evaluates alone, on the unwrapped policy; the others wait (those sharing its
        tensor-parallel vLLM engine take part in its generation)."""
        with runner.main_process_only() as main:
            if main:
                return evaluate(policy, algorithm, val_prompts, runner.accelerator)
            if hasattr(algorithm.generator, "join_main"):  # the colocated vLLM engine (generation/vllm.py)
                algorithm.generator.join_main()
            return {}

    if getattr(algorithm, "loss_type", None) == "real":  # its loss compares whole groups within a micro-batch
        size = algorithm.num_generations
        if schedule.shared_prompts or schedule.minibatch_size % size or schedule.micro_batch_size % size:
            raise AlignkitError(f"--loss_type real compares the {size} completions of a prompt within one micro-batch: "
                                f"mini-batches ({schedule.minibatch_size}) and micro-batches "
                                f"({schedule.micro_batch_size}) must hold whole groups on one process")
    prefetching = hasattr(algorithm.generator, "prefetch") and getattr(algorithm, "off_policy_rollouts", False)
    if prefetching:
        logger.info("--async_generate: each step trains on completions sampled with the weights before the previous "
                    "update, requested while that update ran")

    def next_step_prompts(order, steps, state, schedule) -> list[int] | None:
        """This process's prompt indices of the step after the current one (None after the last step)."""
        if state.global_step + 1 >= schedule.steps:
            return None
        following = state.batches_done_in_epoch + 1
        upcoming = steps[following] if following < len(steps) else next(iter(step_prompts(order, state.epoch + 1)),
                                                                         None)
        if upcoming is None or schedule.shared_prompts:
            return upcoming
        return upcoming[rank * share : (rank + 1) * share]

    with runner.running(schedule.steps, desc=args_for_checkpoint["algorithm"]):
        while state.global_step < schedule.steps and not runner.should_stop:
            steps = step_prompts(order, state.epoch)
            if not steps:
                raise AlignkitError(f"--dataloader_drop_last: the {len(prompts)} prompts do not fill one step of "
                                    f"{global_batch} prompts over all processes")
            while (state.batches_done_in_epoch < len(steps) and state.global_step < schedule.steps
                   and not runner.should_stop):
                started = time.perf_counter()
                mine = steps[state.batches_done_in_epoch]
                if not schedule.shared_prompts:
                    mine = mine[rank * share : (rank + 1) * share]
                split = {"part": (rank, runner.num_processes)} if schedule.shared_prompts else {}
                temperature = None
                if annealing is not None:  # sampling and the step's log-probs both use it
                    temperature = annealing.at(state.global_step * schedule.optimizer_steps_per_step)
                    set_rollout_temperature(algorithm, temperature)
                policy.eval()  # generate() keeps its KV cache only outside training mode with gradient checkpointing
                with runner.accelerator.autocast(), runner.whole_parameters():
                    experience, rollout_metrics, samples = algorithm.experience(
                        policy, [prompts[i] for i in mine], seeds=sampling_seeds(config.seed, state.global_step, mine),
                        sum_all=sum_all if runner.num_processes > 1 else None, **split)
                policy.train()
                if prefetching:  # the next step's completions are sampled while this one trains
                    upcoming = next_step_prompts(order, steps, state, schedule)
                    if upcoming is not None:
                        algorithm.prefetch([prompts[i] for i in upcoming],
                                           seeds=sampling_seeds(config.seed, state.global_step + 1, upcoming), **split)
                runner.begin_step()
                fault_point("micro_batch", state.global_step + 1)  # tests: a signal between rollout and update
                rollout_seconds = time.perf_counter() - started
                update_metrics, problem = RunningMean(), None
                per_epoch = schedule.optimizer_steps_per_step // schedule.update_epochs
                for epoch in range(schedule.update_epochs):
                    metrics, problem = update(model, algorithm, experience, schedule, runner,
                                              seed=config.seed + 7919 * state.global_step + epoch, row_ids=mine,
                                              first_optimizer_step=state.global_step
                                              * schedule.optimizer_steps_per_step + epoch * per_epoch)
                    update_metrics.add(metrics)
                    if problem is not None:
                        break
                with runner.whole_parameters():  # ZeRO-3: each process's engine takes whole tensors
                    algorithm.generator.sync_weights()

                state.global_step += 1
                state.batches_done_in_epoch += 1
                epoch_end = state.batches_done_in_epoch >= len(steps)
                if epoch_end:
                    state.epoch += 1
                    state.batches_done_in_epoch = 0
                metrics = None
                if problem is None:
                    metrics = runner.mean_over_processes({
                        **rollout_metrics, **update_metrics.pop(), "time/rollout_s": rollout_seconds,
                        **({"temperature": temperature} if temperature is not None else {}),
                        "time/update_s": time.perf_counter() - started - rollout_seconds})
                else:
                    runner.skip_nonfinite(problem)
                runner.end_step(metrics, postfix="reward", log_extra={"episode": state.global_step * global_batch},
                                evaluate=evaluate_held_out if val_prompts else None,
                                log_more=functools.partial(log_samples, run_dir, state.global_step, samples),
                                epoch_end=epoch_end)
        return runner.finish(evaluate_held_out if val_prompts else None)


def set_rollout_temperature(algorithm, temperature: float) -> None:
    """The temperature completions are sampled at and their log-probs taken at (logits / T), for the next step."""
    algorithm.temperature = temperature
    algorithm.generator.temperature = temperature


def update_order(count: int, seed: int, *, whole_groups: int = 1) -> torch.Tensor:
    """The shuffled order of a rollout's ``count`` completions for its mini-batches; with ``whole_groups`` G > 1
    the groups (G adjacent completions) are shuffled, each kept together and in order."""
    generator = torch.Generator().manual_seed(seed)
    if whole_groups == 1:
        return torch.randperm(count, generator=generator)
    groups = torch.randperm(count // whole_groups, generator=generator)
    return (groups.unsqueeze(-1) * whole_groups + torch.arange(whole_groups)).flatten()


def update(model, algorithm, experience, schedule: Schedule, runner: Runner, *, seed: int,
           row_ids: list[int], first_optimizer_step: int = 0) -> tuple[dict[str, float], tuple[str, list[int]] | None]:
    """One pass over a rollout: shuffled mini-batches, one optimizer step each. Returns the mean metrics and,
    when a loss or gradient was NaN/inf on any process, what it was (the pass stops there; that update is skipped).

    Every process holds the same number of completions, so all run the same micro-batches: the gradient
    all-reduce happens once per mini-batch, on its last micro-batch."""
    metrics = RunningMean()
    count = experience["completion_ids"].shape[0]
    # --loss_type real compares a group's completions: its groups stay whole
    whole = algorithm.num_generations if getattr(algorithm, "loss_type", None) == "real" else 1
    order = update_order(count, seed, whole_groups=whole)
    for start in range(0, count, schedule.minibatch_size):
        if hasattr(algorithm, "optimizer_step"):  # the optimizer steps taken before this one (CHORD's μ)
            algorithm.optimizer_step = first_optimizer_step + start // schedule.minibatch_size
        # Sorted within the mini-batch (same gradient): a prompt's completions stay adjacent, so a micro-batch
        # holds whole groups whose prompt a shared-prefix layout runs once.
        minibatch = order[start : start + schedule.minibatch_size].sort().values
        micro_starts = range(0, len(minibatch), schedule.micro_batch_size)
        problem = None
        # The optimizer step's completion tokens per process, a token-level loss's normaliser (TRL's
        # num_items_in_batch / processes).
        tokens = experience["completion_mask"][minibatch.to(experience["completion_mask"].device)].sum().float()
        num_items = runner.sum_over_processes(tokens.reshape(1)).item() / runner.num_processes
        for micro_start in micro_starts:
            micro = minibatch[micro_start : micro_start + schedule.micro_batch_size]
            batch = select(experience, micro.to(experience["completion_ids"].device))
            batch["num_items_in_batch"] = torch.tensor(num_items)
            batch["micro_share"] = torch.tensor(len(micro) / len(minibatch))
            last = micro_start == micro_starts[-1]
            with contextlib.nullcontext() if last else runner.accelerator.no_sync(model):
                with runner.accelerator.autocast():
                    loss, step_metrics = algorithm.loss(model, batch)
                if runner.any_process(not torch.isfinite(loss.detach()).item()):
                    problem = (f"non-finite loss ({loss.item()})", row_ids)
                    break
                # Micro-batches weigh by their share of the mini-batch's completions.
                runner.accelerator.backward(loss * len(micro) / len(minibatch))
            metrics.add(step_metrics)
        learning_rate = runner.learning_rate()
        grad_norm, problem = runner.update(model.parameters(), problem, row_ids=row_ids)
        if problem is not None:
            return metrics.pop(), problem
        metrics.add({"learning_rate": learning_rate, **({"grad_norm": grad_norm} if grad_norm is not None else {})})
    return metrics.pop(), None


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
