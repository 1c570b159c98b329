"""``alignkit rlhf --rlhf_type ppo|grpo``: arguments → prompts → models → algorithm → the online loop."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from pathlib import Path

import torch

from alignkit.algorithms.rollout import EncodedPrompt, HFGenerator, stop_token_ids
from alignkit.config.multi_turn_checks import uses_gym
from alignkit.config.run import RunArguments
from alignkit.data.cache import encode_dataset
from alignkit.data.chat_templates import resolve_template
from alignkit.data.loading import load_dataset_spec, parse_columns
from alignkit.data.rows import PromptRow, TokenizedRow
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.losses import rl as rl_math
from alignkit.losses.rl import GRPO_LOSS_TYPES
from alignkit.models.load import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)
from alignkit.models.packing import Layout, config_of, supports_packing
from alignkit.training.model_setup import (
    add_special_tokens,
    check_live_reference,
    fit_embeddings,
    is_adapter,
    load_options,
    loop_additions,
    make_trainable,
    prepare_loaded,
    text_targets,
    tuner_settings,
    weights_dtype,
)
from alignkit.training.online_loop import Schedule, make_schedule, train_online
from alignkit.training.resume import data_fingerprint
from alignkit.training.run_data import load_training_data
from alignkit.training.runner import loop_config_for, open_run_dir, start_run, with_fit_defaults
from alignkit.training.speedups import layout_check
from alignkit.training.temperature import temperature_annealing

logger = logging.getLogger("alignkit")


def run_online(args: RunArguments, defaults: dict) -> Path:
    """Run PPO or GRPO (``args.rlhf_type``) and return the last checkpoint. ``defaults``: the method's values of
    unset flags (``config.defaults.resolve``)."""
    name = args.rlhf_type
    start = start_run(args, name)
    check_online_engine(name, start.engine, use_vllm=args.use_vllm and args.vllm_mode != "server",
                        tensor_parallel_size=args.vllm_tensor_parallel_size)
    start.check_engine()
    if name == "grpo" and args.use_vllm and args.vllm_mode == "server":
        from alignkit.generation.engine_info import with_server_scheduler

        args = with_server_scheduler(args)  # ms-swift's examples give the multi-turn scheduler to the server
    if name == "grpo" and args.multi_turn_scheduler:  # plugins, scheduler and environment: before data loads
        from alignkit.algorithms.scheduler_plugins import check_scheduler

        check_scheduler(args.multi_turn_scheduler, args.external_plugins, args.gym_env)
    # Flags, plugins and data first: a mistake should stop the run before minutes go into loading models.
    grpo = _grpo_settings(args, defaults) if name == "grpo" else None
    annealing = temperature_annealing(args)
    ppo_funcs = _check_ppo_flags(args) if name == "ppo" else []
    if args.use_vllm and args.vllm_mode != "server":  # server mode: checked with the flags (online_checks)
        from alignkit.generation.vllm import check_vllm_available

        check_vllm_available()
    datasets = defaults["dataset"]
    train_rows, val_rows = load_training_data(args, datasets, "prompt")
    model_path = resolve_model_path(args.model)
    args = with_fit_defaults(args, model_path)
    tokenizer = load_tokenizer(model_path, args.model_revision)
    add_special_tokens(args, tokenizer)
    template = resolve_template(tokenizer, template=args.template, template_config=args.template_config)
    tokenizer.chat_template = template.source  # checkpoints then carry the template that trained them
    encoder = ChatEncoder(tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
                          truncation_strategy=args.truncation_strategy, system=args.system, template=template,
                          loss_scale=args.loss_scale, use_chat_template=args.use_chat_template)
    if args.enable_thinking is not None:  # the template's thinking switch, read by Qwen3-style templates
        encoder.chat_template_kwargs = {"enable_thinking": args.enable_thinking}
    # ms-swift's --max_length for ppo/grpo limits the prompt (its rows are prompts); completions add up to
    # --max_completion_length tokens on top.
    prompt_limit = args.max_prompt_length or args.max_length
    prompts = encode_prompts(encoder, train_rows, prompt_limit, args.truncation_strategy, "training")
    val_prompts = encode_prompts(encoder, val_rows, prompt_limit, args.truncation_strategy, "held-out")
    if not prompts:
        raise AlignkitError(f"no training prompts fit {prompt_limit} tokens (--max_prompt_length, else --max_length)")
    as_ids = sum(p.messages is None for p in prompts + val_prompts)
    text_rewards = name == "grpo" and bool(args.reward_model)  # reward models scoring conversations
    if as_ids and (text_rewards or as_ids < len(prompts) + len(val_prompts)):
        raise AlignkitError("prompts given as token ids (ColossalChat's prepare_dataset --type prompt) are scored on "
                            "their ids by PPO's reward model, or by reward functions (which get no prompt messages), "
                            "for all prompts of a run; GRPO's reward models, and prompts mixed with text ones, read "
                            "conversations: pass the prompt jsonl they were prepared from")
    schedule = online_schedule(args, len(prompts), grpo)
    stop_ids = stop_token_ids(encoder)
    logger.info("Completions stop at %s", ", ".join(repr(tokenizer.decode([i])) for i in stop_ids))
    turns = multi_turn_settings(args, encoder, stop_ids, as_ids > 0) if args.multi_turn_scheduler else {}

    policy, frozen_reference = load_policy(args, model_path, tokenizer,
                                           needs_reference=name == "ppo" or grpo["beta"] != 0)
    forward_batch = args.local_rollout_forward_batch_size
    if args.use_vllm and args.vllm_mode == "server":
        from alignkit.generation.vllm_server import connect

        generator = connect(policy, args, stop_ids=stop_ids, max_new_tokens=args.max_completion_length,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                            repetition_penalty=args.repetition_penalty, pad_id=tokenizer.pad_token_id)
    elif args.use_vllm:
        from alignkit.generation.vllm import VllmRollout

        generator = VllmRollout(policy, model_path, stop_ids=stop_ids, max_new_tokens=args.max_completion_length,
                                  temperature=args.temperature, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                                  max_model_len=args.vllm_max_model_len or prompt_limit + args.max_completion_length,
                                  seed=args.seed, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                                  repetition_penalty=args.repetition_penalty,
                                  enable_prefix_caching=args.vllm_enable_prefix_caching,
                                  tensor_parallel_size=args.vllm_tensor_parallel_size,
                                  logprobs=bool(args.rollout_importance_sampling_mode
                                                or args.log_rollout_offpolicy_metrics
                                                or args.off_policy_sequence_mask_delta is not None))
    else:
        generator = HFGenerator(policy, tokenizer.pad_token_id, stop_ids, args.max_completion_length, args.temperature,
                                batch_size=forward_batch, top_p=args.top_p, top_k=max(args.top_k, 0),
                                min_p=args.min_p, repetition_penalty=args.repetition_penalty)
    if (args.rollout_importance_sampling_mode or args.log_rollout_offpolicy_metrics) and not hasattr(
            generator, "want_logprobs"):
        logger.info("--rollout_importance_sampling_mode / --log_rollout_offpolicy_metrics: the completions are sampled "
                    "by the trained model itself (transformers' generate): no rollout engine, no gap to correct or log")
    common = dict(generator=generator, tokenizer=tokenizer, stop_ids=stop_ids, temperature=args.temperature,
                  max_completion_length=args.max_completion_length, missing_eos_penalty=args.missing_eos_penalty,
                  forward_batch_size=forward_batch, frozen_reference=frozen_reference, stop_words=list(args.stop_words),
                  layout=online_layout(args, policy))
    if grpo:
        from alignkit.algorithms.grpo import GRPO

        algorithm = GRPO(**common, reward_funcs=grpo["reward_funcs"] + _reward_model_funcs(args) + _gym_reward(args),
                         reward_weights=grpo["reward_weights"], num_generations=grpo["num_generations"],
                         beta=grpo["beta"], epsilon=args.epsilon, epsilon_high=grpo["epsilon_high"],
                         loss_type=grpo["loss_type"], scale_rewards=grpo["scale_rewards"],
                         needs_old_logprobs=schedule.optimizer_steps_per_step > 1,
                         advantage_estimator=args.advantage_estimator, kl_in_reward=grpo["kl_in_reward"],
                         kl_reward_reduction=args.kl_reward_reduction,
                         delta=args.delta, tau_pos=args.tau_pos, tau_neg=args.tau_neg,
                         importance_sampling_level=args.importance_sampling_level,
                         top_entropy_quantile=args.top_entropy_quantile, log_entropy=args.log_entropy,
                         overlong_filter=args.overlong_filter, dynamic_sample=args.dynamic_sample,
                         max_resample_times=args.max_resample_times, resample_pool=prompts, **turns,
                         off_policy_rollouts=args.async_generate,
                         rollout_importance_sampling_mode=args.rollout_importance_sampling_mode,
                         rollout_importance_sampling_threshold=args.rollout_importance_sampling_threshold,
                         log_rollout_offpolicy_metrics=args.log_rollout_offpolicy_metrics,
                         off_policy_sequence_mask_delta=args.off_policy_sequence_mask_delta,
                         real_tau=args.real_tau,
                         fipo=rl_math.FipoSettings(args.fipo_decay_rate, args.fipo_clip_range, args.fipo_clip_high_only,
                                                   args.fipo_safety_threshold))
        if args.chord_sft_dataset:  # CHORD: expert SFT rows mixed into the loss
            algorithm = dataclasses.replace(algorithm, **_chord(args, tokenizer, template))
        if args.teacher_model:  # OPD-RL: the teacher's per-token log-ratio joins the advantages
            from alignkit.training.gkd_setup import load_teacher

            teacher, _, teacher_path = load_teacher(args, policy, tokenizer)
            algorithm = dataclasses.replace(algorithm, teacher=teacher, teacher_kl_coef=args.teacher_kl_coef)
            logger.info("OPD-RL: teacher %s (frozen); each token's advantage + %g × (log π_teacher − log π_old)",
                        teacher_path, args.teacher_kl_coef)
    else:
        algorithm = _build_ppo(args, common, tokenizer, encoder, ppo_funcs, model_path)

    resolved = {**args.to_dict(), "model": model_path, "algorithm": name, "dtype": start.precision,
                **({k: v for k, v in grpo.items() if k != "reward_funcs"} if grpo else {}),
                "train_prompts": len(prompts), "train_data_sha256": data_fingerprint([p.ids for p in prompts]),
                # Each step samples prompts per process × processes: resume with the same number of processes.
                "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    config, terms = loop_additions(loop_config_for(args, start), args, policy, vision=False)
    if terms:  # the online losses are their own (alignkit/algorithms/ppo.py, grpo.py)
        raise AlignkitError(f"--router_aux_loss_coef with --rlhf_type {name}: the router's load-balancing loss is "
                            "added to the offline methods' loss only; set it to 0")
    return train_online(policy=policy, tokenizer=tokenizer, algorithm=algorithm, prompts=prompts,
                        val_prompts=val_prompts, schedule=schedule, config=config,
                        run_dir=open_run_dir(args, resolved, start.resume), args_for_checkpoint=resolved,
                        annealing=annealing)


def online_schedule(args: RunArguments, num_prompts: int, grpo: dict | None):
    """The online schedule: for grpo ms-swift's generation batch (alignkit.training.generation_batch), unless
    ColossalChat's flags (--experience_batch_size, --train_batch_size) or TRL's --num_mini_batches say it."""
    batch = None
    if grpo and args.experience_batch_size is None and args.train_batch_size is None and args.num_mini_batches == 1:
        from alignkit.training.generation_batch import generation_batch

        batch = generation_batch(
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            num_processes=int(os.environ.get("WORLD_SIZE", "1")), num_generations=grpo["num_generations"],
            steps_per_generation=args.steps_per_generation, generation_batch_size=args.generation_batch_size,
            num_iterations=args.num_iterations, max_steps=args.max_steps)
        if batch.generations_per_step > 1:  # what is computed over one generation would span several here
            whole_batch = [flag for flag, on in (("--scale_rewards batch", grpo["scale_rewards"] == "batch"),
                                                 ("--dynamic_sample", args.dynamic_sample)) if on]
            if whole_batch:
                raise AlignkitError(f"{whole_batch[0]} with --steps_per_generation below "
                                    "--gradient_accumulation_steps: it is computed over each generation, and here an "
                                    "optimizer step's generations are sampled as one; set --steps_per_generation to "
                                    "a multiple of --gradient_accumulation_steps")
        if batch.split_groups:
            return split_group_schedule(args, batch, num_prompts)
    elif grpo and (args.steps_per_generation is not None or args.generation_batch_size is not None):
        raise AlignkitError("--steps_per_generation/--generation_batch_size (ms-swift's generation batch) do not "
                            "combine with --experience_batch_size, --train_batch_size or --num_mini_batches")
    return make_schedule(
        num_prompts=num_prompts, num_generations=grpo["num_generations"] if grpo else 1,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, num_mini_batches=args.num_mini_batches,
        experience_batch_size=batch.prompts_per_process if batch else args.experience_batch_size,
        num_collect_steps=args.num_collect_steps,
        train_batch_size=batch.minibatch_completions if batch else args.train_batch_size,
        update_epochs=args.num_iterations if grpo else args.num_ppo_epochs,
        max_steps=batch.rollout_steps or 0 if batch and args.max_steps > 0 else args.max_steps,
        num_episodes=args.num_episodes, num_train_epochs=args.num_train_epochs, drop_last=args.dataloader_drop_last,
    )


def split_group_schedule(args: RunArguments, batch, num_prompts: int) -> Schedule:
    """The schedule when a generation's groups span processes: every process gets the step's prompts and samples
    its slice of their completions (``Schedule.shared_prompts``)."""
    if args.dynamic_sample:
        raise AlignkitError("--dynamic_sample with groups split across processes (--per_device_train_batch_size × "
                            "--steps_per_generation not a multiple of --num_generations) is not supported; make "
                            "each process's share hold whole groups")
    if args.max_steps > 0:
        steps = batch.rollout_steps
    elif args.num_episodes is not None:
        steps = args.num_episodes
    elif args.dataloader_drop_last:
        steps = max(1, math.ceil(args.num_train_epochs * (num_prompts // batch.global_prompts)))
    else:
        steps = max(1, math.ceil(args.num_train_epochs * num_prompts / batch.global_prompts))
    logger.info("Groups of --num_generations %d span processes: each of them samples %d completions of the step's "
                "%d prompts", args.num_generations, batch.completions_per_process, batch.global_prompts)
    return Schedule(batch.global_prompts, batch.completions_per_process, batch.minibatch_completions,
                    min(args.per_device_train_batch_size, batch.minibatch_completions), args.num_iterations, steps,
                    shared_prompts=True)


def check_online_engine(name: str, engine, *, use_vllm: bool, tensor_parallel_size: int = 1) -> None:
    """What the online methods cannot run on, said before anything is loaded. Rollouts call ``generate`` on
    every process, each for as many tokens as its own completions need. ``use_vllm``: the colocated engine,
    one per process or per group of --vllm_tensor_parallel_size processes (which must divide them)."""
    if engine is not None and engine.kind == "fsdp":
        raise AlignkitError(f"--fsdp with --rlhf_type {name}: FSDP gathers each layer's weights with collectives "
                            "inside every forward, and processes generating completions of different lengths would "
                            "wait on each other forever; use --deepspeed zero2 or zero3 (or plain data parallel)")
    if use_vllm:
        from alignkit.generation.vllm import engine_groups

        engine_groups(int(os.environ.get("WORLD_SIZE", "1")), tensor_parallel_size)


def online_layout(args: RunArguments, policy) -> Layout:
    """How the policy's (and reference's) completion log-probs are computed: packed with the prompt held once
    per group (--padding_free, --prefix_sharing; the same numbers as padded batches), or padded."""
    padding_free = args.padding_free and supports_packing(policy) and args.neftune_noise_alpha is None
    if args.padding_free and args.neftune_noise_alpha is not None:
        logger.info("--neftune_noise_alpha scales its noise by the padded length: padded batches")
    elif args.padding_free and not padding_free:
        logger.warning("--padding_free needs sdpa or eager attention, not %s: using padded batches",
                       config_of(policy)._attn_implementation)
    sharing = padding_free and args.prefix_sharing
    layout = Layout(padding_free=padding_free, prefix_sharing=sharing,
                    check=layout_check(args, sharing) if padding_free else None)
    logger.info("Completion log-probs: %s", "packed, shared prompts" if layout.prefix_sharing
                else "packed" if layout.padding_free else "padded batches")
    return layout


def load_policy(args: RunArguments, model_path: str, tokenizer, *, needs_reference: bool):
    """The trained policy (an adapter or full, dropout off) and, when the reference cannot be the adapter-disabled
    policy (full fine-tuning, or --ref_model), a frozen reference model. Returns (policy, reference or None)."""
    policy = load_causal_lm(model_path, args.model_revision, weights_dtype(args), options=load_options(args))
    fit_embeddings(policy, tokenizer)
    prepare_loaded(policy, args)
    settings = tuner_settings(args, total_steps=0)  # adalora is refused for the online methods
    check_live_reference(args, settings, live_adapter_reference=needs_reference and is_adapter(args)
                         and not args.ref_model)
    frozen_reference = None
    if needs_reference and (not is_adapter(args) or args.ref_model):
        frozen_reference = (
            load_causal_lm(resolve_model_path(args.ref_model), None, weights_dtype(args)) if args.ref_model
            else copy.deepcopy(policy)
        )
        frozen_reference.eval().requires_grad_(False)
    policy = make_trainable(policy, args, settings=settings, targets=text_targets(args))
    disable_dropout(policy)
    trainable, total = count_parameters(policy)
    logger.info("Policy %s: %s training, %d of %d parameters trainable (%.2f%%)", model_path, args.train_type,
                trainable, total, 100 * trainable / total)
    return policy, frozen_reference


def encode_prompts(
    encoder: ChatEncoder, rows: list[PromptRow], limit: int, strategy: str, split: str
) -> list[EncodedPrompt]:
    """Prompt rows → token ids ending in the assistant header; prompts over ``limit`` tokens follow
    --truncation_strategy (delete: dropped and counted; left/right: their beginning is cut; raise)."""
    encoded, dropped = [], 0
    for row in rows:
        if isinstance(row, TokenizedRow):  # stored ids, used as they are
            messages, ids = None, list(row.sequences[0][0])
        else:
            messages = encoder.system_applied(row.prompt)
            ids = encoder.encode_prompt(row.prompt)
        if len(ids) > limit:
            if strategy == "raise":
                source = row.source
                raise DataError(f"the prompt has {len(ids)} tokens, more than the {limit} allowed",
                                **({"file": source.file, "row": source.row} if source else {}))
            if strategy == "delete":
                dropped += 1
                continue
            ids = ids[-limit:]
        encoded.append(EncodedPrompt(messages=messages, ids=ids, extras=dict(row.extras)))
    if dropped:
        logger.warning("Dropped %d of %d %s prompts longer than %d tokens", dropped, len(rows), split, limit)
    return encoded


def multi_turn_settings(args: RunArguments, encoder: ChatEncoder, stop_ids: list[int], prompts_as_ids: bool) -> dict:
    """--multi_turn_scheduler → GRPO's scheduler, --max_turns and how messages become tokens (``multi_turn.Chat``).
    The plugin files that register schedulers and environments were loaded and checked by run_online."""
    from alignkit.algorithms.multi_turn import Chat, build_scheduler
    from alignkit.algorithms.swift_shim import swift_multi_turns

    if prompts_as_ids or not args.use_chat_template:
        raise AlignkitError("--multi_turn_scheduler: the scheduler's turns are messages, rendered by the chat "
                            "template; prompts given as token ids or --use_chat_template false have none")
    tokenizer = encoder.tokenizer
    scheduler = build_scheduler(args.multi_turn_scheduler, swift_multi_turns(), max_turns=args.max_turns,
                                tokenizer=tokenizer, gym_env=args.gym_env)
    chat = Chat(render=lambda messages, prompt: encoder.render(messages, generation_prompt=prompt),
                tokens=encoder.tokens,
                decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                text=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop_ids=set(stop_ids))
    logger.info("Multi-turn rollouts: --multi_turn_scheduler %s, --max_turns %s%s", args.multi_turn_scheduler,
                args.max_turns, f", --gym_env {args.gym_env}" if args.gym_env else "")
    return {"scheduler": scheduler, "max_turns": args.max_turns, "chat": chat}


def _grpo_settings(args: RunArguments, defaults: dict) -> dict:
    """GRPO's resolved settings (defaults applied and logged), and its reward functions, checked early."""
    from alignkit.algorithms.rewards import resolve_reward_funcs

    gym = uses_gym(args)
    if not args.reward_funcs and not args.reward_model and not args.teacher_model and not gym:
        raise AlignkitError("--rlhf_type grpo needs rewards: --reward_funcs (e.g. `arith_accuracy arith_format` "
                            "for the built-in task, `accuracy format` for math data with a solution column, or your "
                            "own functions), --reward_model and/or a gym environment's (--use_gym_env)")
    funcs = resolve_reward_funcs(args.reward_funcs, args.external_plugins, args)
    count = len(funcs) + len(args.reward_model) + gym
    weights = list(args.reward_weights) or [1.0] * count
    if len(weights) != count:
        raise AlignkitError(f"--reward_weights has {len(weights)} values for {count} rewards "
                            f"(--reward_funcs, then --reward_model{', then gym_reward' if gym else ''})")
    loss_type = defaults["loss_type"][0]
    if len(args.loss_type) > 1 or loss_type not in GRPO_LOSS_TYPES:
        raise AlignkitError(f"--rlhf_type grpo takes one --loss_type of {', '.join(GRPO_LOSS_TYPES)}, "
                            f"got {' '.join(args.loss_type)}")
    if args.num_generations < 2 and not args.teacher_model:
        raise AlignkitError("--num_generations must be at least 2: GRPO's advantages compare completions of a prompt "
                            "(1 only with --teacher_model, whose per-token term is then the whole signal)")
    if args.num_generations < 1:
        raise AlignkitError(f"--num_generations {args.num_generations}: expected 1 or more")
    if args.num_generations == 1 and args.advantage_estimator == "rloo":
        raise AlignkitError("--advantage_estimator rloo needs --num_generations of at least 2 (its leave-one-out "
                            "baseline)")
    if args.pretrain_dataset:
        raise AlignkitError("--pretrain_dataset (ptx) is for --rlhf_type ppo")
    if args.kl_reward_reduction != "sum" and not (defaults["kl_in_reward"] and defaults["beta"]):
        raise AlignkitError(f"--kl_reward_reduction {args.kl_reward_reduction} reduces the KL taken off the reward: "
                            "it needs --kl_in_reward true and --beta above 0")
    return {"reward_funcs": funcs, "reward_weights": weights, "loss_type": loss_type, "beta": defaults["beta"],
            "num_generations": args.num_generations, "scale_rewards": defaults["scale_rewards"],
            "kl_in_reward": defaults["kl_in_reward"], "epsilon_high": defaults["epsilon_high"]}


def _chord(args: RunArguments, tokenizer, template) -> dict:
    """CHORD's schedule and its endless batches of --chord_sft_dataset's rows, encoded as sft encodes them (up to
    --max_length + --max_completion_length tokens; rows that do not fit are dropped and counted)."""
    from alignkit.algorithms.chord import ChordSchedule, sft_batches
    from alignkit.data.template import Truncated

    rows, _ = load_training_data(dataclasses.replace(args, split_dataset_ratio=0.0, val_dataset=[]),
                                 args.chord_sft_dataset, "sft")
    encoder = ChatEncoder(tokenizer, max_length=(args.max_length or 0) + args.max_completion_length or None,
                          truncation_strategy="delete", system=args.system, template=template,
                          use_chat_template=args.use_chat_template)
    encoded, dropped = [], 0
    for row in rows:
        try:
            encoded.append(encoder.encode_conversation(row))
        except Truncated:
            dropped += 1
    if not encoded:
        raise AlignkitError(f"--chord_sft_dataset: none of its {len(rows)} rows fits --max_length + "
                            "--max_completion_length tokens")
    batch_size = args.chord_sft_per_device_train_batch_size or args.per_device_train_batch_size
    schedule = ChordSchedule(args.chord_mu_warmup_steps or 0, args.chord_mu_decay_steps, args.chord_mu_peak,
                             args.chord_mu_valley, phi=args.chord_enable_phi_function)
    logger.info("CHORD: %d expert rows (%d too long, dropped), %d per micro-batch; mu %s -> %s over %d + %d "
                "optimizer steps%s", len(encoded), dropped, batch_size, schedule.peak, schedule.valley,
                schedule.warmup_steps, schedule.decay_steps, ", phi-weighted" if schedule.phi else "")
    return {"chord": schedule, "chord_batches": sft_batches(encoded, batch_size, tokenizer.pad_token_id, args.seed)}


def _check_ppo_flags(args: RunArguments) -> list:
    """PPO's flags checked; its reward functions (none when a reward model scores)."""
    from alignkit.algorithms.rewards import resolve_reward_funcs

    if args.reward_funcs and args.reward_model:
        raise AlignkitError("--rlhf_type ppo scores with one --reward_model or with --reward_funcs (verifiable "
                            "rewards, as ColossalChat's --no_neural_reward_model), not both")
    if not args.reward_funcs and len(args.reward_model) != 1:
        raise AlignkitError("--rlhf_type ppo needs one --reward_model: the checkpoint of an `alignkit rlhf --rlhf_type "
                            "rm` run, or a sequence-classification model (or --reward_funcs, verifiable rewards)")
    funcs = resolve_reward_funcs(args.reward_funcs, args.external_plugins, args) if args.reward_funcs else []
    if args.reward_weights and len(args.reward_weights) != len(funcs):
        raise AlignkitError(f"--reward_weights has {len(args.reward_weights)} values for the {len(funcs)} "
                            "--reward_funcs (PPO's reward model takes no weight)")
    if bool(args.pretrain_dataset) != (args.ptx_coef > 0):
        raise AlignkitError("--pretrain_dataset and --ptx_coef go together: the actor loss is "
                            "(1 − ptx_coef)·PPO + ptx_coef·LM loss on the pretrain data")
    if not 0 <= args.ptx_coef <= 1:
        raise AlignkitError(f"--ptx_coef must be in [0, 1], got {args.ptx_coef}")
    return funcs


def _gym_reward(args: RunArguments) -> list:
    """--use_gym_env: the environments' total rewards, the last reward column (ms-swift's 'gym_reward')."""
    from alignkit.algorithms.multi_turn import gym_reward
    from alignkit.algorithms.rewards import RewardFunction

    return [RewardFunction.wrap("gym_reward", gym_reward)] if uses_gym(args) else []


def _reward_model_funcs(args: RunArguments) -> list:
    from alignkit.algorithms.rewards import RewardFunction
    from alignkit.models.scalar_model import RewardModelFunction, load_scalar_model

    funcs = []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for path in args.reward_model:
        model, tokenizer = load_scalar_model(path, adapters=args.reward_adapters)
        # It reads prompt + completion: --max_length (the prompt's limit) + --max_completion_length tokens.
        encoder = ChatEncoder(tokenizer, max_length=args.max_length + args.max_completion_length,
                              truncation_strategy="left", system=args.system)
        name = f"reward_model:{Path(path).name}"
        scorer = RewardModelFunction(model.to(device), encoder, args.local_rollout_forward_batch_size, name,
                                     packed=args.padding_free)
        funcs.append(RewardFunction.wrap(name, scorer))
    return funcs


def check_same_tokenizer(source: str, tokenizer) -> None:
    """The value model reads the policy's tokens: a --value_model with a tokenizer of its own must share it (a
    ColossalChat checkpoint, state dict only, has none)."""
    from alignkit.models.load import load_tokenizer

    if not any((Path(source) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return
    if load_tokenizer(source).get_vocab() != tokenizer.get_vocab():
        raise AlignkitError(f"--value_model {source}: its tokenizer differs from the policy's; the value model reads "
                            "the policy's tokens, so they must match")


def _build_ppo(args: RunArguments, common: dict, tokenizer, encoder: ChatEncoder, reward_funcs: list,
               model_path: str):
    from alignkit.algorithms.ppo import PPO, PretrainBatches
    from alignkit.data.collate import SequenceCollator
    from alignkit.models.colossal_checkpoint import is_colossal_scalar_checkpoint
    from alignkit.models.scalar_model import (
        load_scalar_model,
        load_value_model,
        trainable_value_model,
        value_model_from,
    )

    reward_model = reward_tokenizer = None
    if not reward_funcs:
        reward_model, reward_tokenizer = load_scalar_model(args.reward_model[0], adapters=args.reward_adapters)
        if reward_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise AlignkitError(
                f"--reward_model {args.reward_model[0]}: its tokenizer differs from the policy's; PPO's "
                "value model starts from the reward model and reads the policy's tokens, so they must match"
            )
    lora = None
    if is_adapter(args):
        if args.train_type != "lora":
            logger.info("PPO's value model trains LoRA (--lora_rank %d) beside the policy's --tuner_type %s",
                        args.lora_rank, args.train_type)
        lora = {"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                "target_modules": args.lora_target_modules}
    # ms-swift loads its critic from --reward_model too (with --reward_adapters), tuned like the policy; its
    # seq-cls LoRA trains the score head in full (peft's SEQ_CLS modules_to_save), as here.
    trained = "with LoRA on the backbone and the head in full" if lora else "in full"
    if args.value_model or reward_funcs:
        # Verifiable rewards without a reward model: the policy's backbone with a new head (ColossalChat's Critic).
        source = args.value_model or model_path
        check_same_tokenizer(source, tokenizer)
        value_model = trainable_value_model(load_value_model(source), lora=lora)
        logger.info("PPO's value model: %s%s, trained %s", source, "" if args.value_model else " (--model) with a new "
                    "value head", trained)
    else:
        head = ("value_head.safetensors" if (Path(args.reward_model[0]) / "value_head.safetensors").is_file()
                else "value_head.*" if is_colossal_scalar_checkpoint(args.reward_model[0]) else "score")
        logger.info("PPO's value model: a copy of --reward_model %s, its %s head as the value head, trained %s",
                    args.reward_model[0], head, trained)
        value_model = value_model_from(reward_model, lora=lora)
    disable_dropout(value_model)
    if reward_funcs:
        logger.info("PPO's rewards: %s (no reward model)", ", ".join(f.name for f in reward_funcs))
    reward_encoder = None if reward_tokenizer is None else ChatEncoder(
        reward_tokenizer, max_length=args.max_length + args.max_completion_length, truncation_strategy="left",
        system=args.system)
    pretrain = None
    if args.pretrain_dataset:
        rows = [row for spec in args.pretrain_dataset
                for row in load_dataset_spec(spec, "sft", seed=args.data_seed, columns=parse_columns(args.columns),
                                             check_dataset_strategy=args.check_dataset_strategy)]
        encoded = encode_dataset(encoder, rows, "pretrain", num_proc=args.dataset_num_proc,
                                 use_cache=args.load_from_cache_file)
        if not encoded:
            raise AlignkitError("no --pretrain_dataset rows fit --max_length")
        pretrain = PretrainBatches(encoded, SequenceCollator(tokenizer.pad_token_id), args.per_device_train_batch_size,
                                   seed=args.seed)
    return PPO(**common, reward_model=reward_model, reward_encoder=reward_encoder, value_model=value_model,
               kl_coef=args.kl_coef, cliprange=args.cliprange, cliprange_value=args.cliprange_value,
               vf_coef=args.vf_coef, gamma=args.gamma, lam=args.lam, whiten_rewards=args.whiten_rewards,
               ptx_coef=args.ptx_coef, pretrain=pretrain, reward_funcs=reward_funcs,
               reward_weights=list(args.reward_weights) or [1.0] * len(reward_funcs))
