"""ms-swift's (TRL's) GRPO batch accounting, in alignkit's terms of a step (one generation and its updates).

ms-swift counts over all processes (``RolloutTrainerArgumentsMixin._init_generation_batch_params``)::

    generation_batch_size = per_device_train_batch_size × processes × steps_per_generation   (completions)
    steps_per_generation  = gradient_accumulation_steps when neither is given

and the generation batch must hold whole groups of ``num_generations``. Each optimizer step takes
per_device_train_batch_size × gradient_accumulation_steps completions per process, so one generation serves
steps_per_generation / gradient_accumulation_steps optimizer steps, × ``--num_iterations`` passes; ``--max_steps``
counts optimizer steps. Where steps_per_generation divides gradient_accumulation_steps instead, an optimizer step
spans several generations, all sampled from the same weights: alignkit samples them together as one step. When
each process's share, per_device_train_batch_size × steps_per_generation, holds whole groups, each process
samples its own prompts; otherwise (``split_groups``) every process receives all the step's prompts and samples
its slice of their completions, and the rewards are summed over the processes so that each group's advantages
see the whole group, as ms-swift gathers them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class GenerationBatch:
    prompts_per_process: int  # prompts each process samples per step (× num_generations completions)
    optimizer_steps_per_generation: int  # per pass over the generation (× --num_iterations passes)
    minibatch_completions: int  # per process per optimizer step: per_device_train_batch_size × grad. accumulation
    rollout_steps: int | None  # steps (generations) for --max_steps optimizer steps; None without --max_steps
    split_groups: bool = False  # groups span processes: every process gets all global_prompts
    global_prompts: int = 0  # prompts per step over all processes
    completions_per_process: int = 0
    generations_per_step: int = 1  # ms-swift generations an optimizer step spans, sampled together as one step


def generation_batch(*, per_device_train_batch_size: int, gradient_accumulation_steps: int, num_processes: int,
                     num_generations: int, steps_per_generation: int | None, generation_batch_size: int | None,
                     num_iterations: int, max_steps: int) -> GenerationBatch:
    """ms-swift's generation batch → how much a step samples and trains on each process (see the module doc)."""
    global_batch = per_device_train_batch_size * num_processes
    if steps_per_generation is None and generation_batch_size is None:
        steps_per_generation = gradient_accumulation_steps
    elif steps_per_generation is None:
        if generation_batch_size % global_batch:
            raise AlignkitError(f"--generation_batch_size {generation_batch_size} must be a multiple of "
                                f"--per_device_train_batch_size × processes = {global_batch}")
        steps_per_generation = generation_batch_size // global_batch
    elif generation_batch_size is not None and generation_batch_size != global_batch * steps_per_generation:
        raise AlignkitError(f"--generation_batch_size {generation_batch_size} must equal --per_device_train_batch_size "
                            f"× processes × --steps_per_generation = {global_batch * steps_per_generation}")
    if steps_per_generation < 1:
        raise AlignkitError(f"--steps_per_generation must be at least 1, got {steps_per_generation}")
    total = global_batch * steps_per_generation
    if total % num_generations:
        raise AlignkitError(
            f"a generation of --per_device_train_batch_size {per_device_train_batch_size} × {num_processes} "
            f"process(es) × --steps_per_generation {steps_per_generation} = {total} completions cannot hold whole "
            f"groups of --num_generations {num_generations}; make it a multiple (as ms-swift requires)")
    spans = 1
    if steps_per_generation < gradient_accumulation_steps and gradient_accumulation_steps % steps_per_generation == 0:
        # An optimizer step spans several generations (ms-swift/TRL generate again every steps_per_generation
        # micro-batches). No update happens between them, so they are sampled from the same weights: sampled here
        # as one step of that many generations, each group's advantages its own as before.
        spans = gradient_accumulation_steps // steps_per_generation
        if num_iterations > 1:
            raise AlignkitError(
                f"--steps_per_generation {steps_per_generation} below --gradient_accumulation_steps "
                f"{gradient_accumulation_steps} with --num_iterations {num_iterations}: an optimizer step spanning "
                "generations that are each reused is not supported; use --num_iterations 1 or --steps_per_generation "
                f"{gradient_accumulation_steps}")
        logger.info("--steps_per_generation %d: each optimizer step spans %d generations of %d completions, sampled "
                    "from the same weights (no update between them): sampled together, as one step",
                    steps_per_generation, spans, total)
        steps_per_generation = gradient_accumulation_steps
    per_process = per_device_train_batch_size * steps_per_generation
    if steps_per_generation % gradient_accumulation_steps:
        raise AlignkitError(
            f"--steps_per_generation {steps_per_generation} must be a multiple of --gradient_accumulation_steps "
            f"{gradient_accumulation_steps}, or divide it: here an optimizer step spans whole generations only")
    updates = steps_per_generation // gradient_accumulation_steps
    rollout_steps = None
    if max_steps > 0:
        rollout_steps = math.ceil(max_steps / (updates * num_iterations))
        if rollout_steps * updates * num_iterations != max_steps:
            logger.warning("--max_steps %d optimizer steps: %d generations of %d optimizer steps each make %d",
                           max_steps, rollout_steps, updates * num_iterations, rollout_steps * updates * num_iterations)
    global_total = global_batch * steps_per_generation
    return GenerationBatch(per_process // num_generations, updates,
                           per_device_train_batch_size * gradient_accumulation_steps, rollout_steps,
                           split_groups=per_process % num_generations != 0,
                           global_prompts=global_total // num_generations, completions_per_process=per_process,
                           generations_per_step=spans)
