"""Checks of the online-RL flags (ppo, grpo) that need more than a range: values and combinations alignkit
does not run, each refused before anything loads with what to use instead."""

from __future__ import annotations

from alignkit.errors import AlignkitError
from alignkit.losses.rl import GRPO_LOSS_TYPES

REFUSED_GRPO_LOSS_TYPES = {
    "luspo": "LUSPO is not implemented",
    "vespo": "VESPO is not implemented",
}


def check_online_flags(args) -> None:
    """Raises AlignkitError for what the online methods cannot run (see the module doc)."""
    if args.rlhf_type == "gkd":
        check_gkd_flags(args)
    if args.rlhf_type == "grpo":
        loss_type = args.loss_type[0] if len(args.loss_type) == 1 else None
        if loss_type in REFUSED_GRPO_LOSS_TYPES:
            raise AlignkitError(f"--loss_type {loss_type}: {REFUSED_GRPO_LOSS_TYPES[loss_type]}; --rlhf_type grpo "
                                f"takes one of {', '.join(GRPO_LOSS_TYPES)}")
        if args.loss_type and (len(args.loss_type) > 1 or loss_type not in GRPO_LOSS_TYPES):
            raise AlignkitError(f"--rlhf_type grpo takes one --loss_type of {', '.join(GRPO_LOSS_TYPES)}, "
                                f"got {' '.join(args.loss_type)}")
        if not 0 < args.top_entropy_quantile <= 1:
            raise AlignkitError(f"--top_entropy_quantile {args.top_entropy_quantile}: expected a value in (0, 1]")
        if args.max_resample_times < 0:
            raise AlignkitError(f"--max_resample_times {args.max_resample_times}: expected 0 or more")
        if loss_type == "real":
            check_real(args)
        if args.chord_sft_dataset:
            missing = [flag for flag in ("chord_mu_decay_steps", "chord_mu_peak", "chord_mu_valley")
                       if getattr(args, flag) is None]
            if missing:
                raise AlignkitError(f"--chord_sft_dataset needs mu's schedule: {', '.join('--' + f for f in missing)}")
            if args.chord_mu_decay_steps < 1 or (args.chord_mu_warmup_steps or 0) < 0:
                raise AlignkitError("--chord_mu_decay_steps must be at least 1 and --chord_mu_warmup_steps at least 0")
        if args.teacher_model and loss_type == "fipo":
            raise AlignkitError("--loss_type fipo with --teacher_model: its weights read a per-completion advantage's "
                                "sign, and a teacher makes the advantage per token (as ms-swift, refused)")
        if args.async_generate:
            check_async_generate(args)
    if args.rlhf_type not in ("ppo", "grpo", "gkd"):
        return
    if args.vllm_mode is not None and not args.use_vllm:
        raise AlignkitError(f"--vllm_mode {args.vllm_mode} needs --use_vllm true (as in ms-swift)")
    if args.vllm_mode == "server":
        if not args.vllm_server_host and not args.vllm_server_base_url:
            raise AlignkitError("--vllm_mode server needs --vllm_server_host (or --vllm_server_base_url): the "
                                "address of an `alignkit rollout` server (as ms-swift's `swift rollout`)")
        check_server_lists(args)
        if _fsdp(args.fsdp):
            raise AlignkitError("--vllm_mode server with FSDP: the weight push gathers ZeRO-3's shards with "
                                "DeepSpeed, not FSDP's; use --deepspeed zero3 (or zero2, or plain data parallel)")
    elif args.vllm_tensor_parallel_size < 1:
        raise AlignkitError(f"--vllm_tensor_parallel_size {args.vllm_tensor_parallel_size}: expected 1 or more")
    elif args.vllm_tensor_parallel_size > 1 and args.dynamic_sample:
        raise AlignkitError(f"--vllm_tensor_parallel_size {args.vllm_tensor_parallel_size} with --dynamic_sample: the "
                            "processes sharing a colocated engine generate together, and each would resample as "
                            "often as its own groups need; use --vllm_tensor_parallel_size 1")
    if not (args.top_k == -1 or args.top_k >= 0) or not 0 < args.top_p <= 1 or not 0 <= args.min_p < 1:
        raise AlignkitError(f"--top_k {args.top_k} / --top_p {args.top_p} / --min_p {args.min_p}: expected top_k -1 "
                            "or >= 0, top_p in (0, 1], min_p in [0, 1)")
    if args.repetition_penalty <= 0:
        raise AlignkitError(f"--repetition_penalty {args.repetition_penalty}: expected a positive number")


def check_real(args) -> None:
    """--loss_type real compares the completions of a group within one micro-batch, so micro-batches hold whole
    groups; its loss has no per-token term for the rollout corrections to weigh."""
    if args.per_device_train_batch_size % args.num_generations:
        raise AlignkitError(f"--loss_type real: --per_device_train_batch_size {args.per_device_train_batch_size} must "
                            f"be a multiple of --num_generations {args.num_generations} (each micro-batch compares "
                            "whole groups)")
    if args.teacher_model:
        raise AlignkitError("--loss_type real with --teacher_model: its group contrast reads one advantage per "
                            "completion, a teacher makes them per token (as ms-swift, refused)")
    corrections = [flag for flag in ("rollout_importance_sampling_mode", "off_policy_sequence_mask_delta")
                   if getattr(args, flag) is not None]
    if corrections:
        raise AlignkitError(f"--{corrections[0]} with --loss_type real: its loss has no per-token term to weigh or "
                            "mask")


def check_server_lists(args) -> None:
    """Several rollout servers (ms-swift's VLLMClient): one --vllm_server_port per --vllm_server_host (the base URLs,
    when given, stand for both), and none or one --vllm_server_group_port per server; no value is repeated for the
    others, as in ms-swift."""
    servers, named = ((len(args.vllm_server_base_url), "--vllm_server_base_url") if args.vllm_server_base_url
                      else (len(args.vllm_server_host), "--vllm_server_host"))
    if not args.vllm_server_base_url and len(args.vllm_server_port) != servers:
        raise AlignkitError(f"--vllm_server_host names {servers} rollout server(s) and --vllm_server_port "
                            f"{len(args.vllm_server_port)} port(s): give one port per host, in the same order")
    if args.vllm_server_group_port and len(args.vllm_server_group_port) != servers:
        raise AlignkitError(f"{named} names {servers} rollout server(s) and --vllm_server_group_port "
                            f"{len(args.vllm_server_group_port)} port(s): give one group port per server, or none "
                            "(51216, 51217, ...)")


def check_async_generate(args) -> None:
    """--async_generate (grpo): the next step's completions are sampled on a rollout server while this step trains."""
    if not (args.use_vllm and args.vllm_mode == "server"):
        raise AlignkitError("--async_generate true needs a rollout server (--use_vllm true --vllm_mode server, as in "
                            "ms-swift): the next step's completions are sampled there while this step trains")
    if getattr(args, "final_temperature", None) is not None:
        raise AlignkitError("--async_generate with --final_temperature: the next step's completions are requested "
                            "before its annealed temperature is known")
    if args.dynamic_sample:
        raise AlignkitError("--async_generate with --dynamic_sample: a resampled group would be drawn with the "
                            "current weights next to the prefetched, one-step-old ones; use one or the other")


def check_gkd_flags(args) -> None:
    """--rlhf_type gkd: a teacher to distil from, λ and β in [0, 1], and what its sampling does not run on."""
    if not args.teacher_model:
        raise AlignkitError("--rlhf_type gkd needs --teacher_model (a model directory or hub id with the student's "
                            "tokenizer); self-distillation without a teacher is not supported")
    for flag in ("lmbda", "beta"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 1:
            raise AlignkitError(f"--{flag} {value}: expected a value in [0, 1] for --rlhf_type gkd")
    if args.sft_alpha < 0:
        raise AlignkitError(f"--sft_alpha {args.sft_alpha}: expected 0 or more")
    if _fsdp(args.fsdp):
        raise AlignkitError("--rlhf_type gkd with FSDP: the student samples with transformers' generate, which needs "
                            "whole weights; alignkit gathers them for DeepSpeed ZeRO-3 only, so use --deepspeed zero3 "
                            "(or zero2, or plain data parallel)")
    if args.teacher_deepspeed and args.offload_teacher_model:
        raise AlignkitError("--teacher_deepspeed with --offload_teacher_model: DeepSpeed places the teacher's weights "
                            "itself; for CPU memory use --teacher_deepspeed zero3_offload without "
                            "--offload_teacher_model")
    if args.async_generate:
        raise AlignkitError("--async_generate with --rlhf_type gkd is not supported (nor in ms-swift)")


def _fsdp(fsdp) -> bool:
    return fsdp not in (False, None, "", "false")


def _zero3(deepspeed: str | None) -> bool:
    """--deepspeed names ZeRO-3 (a shipped name, or a JSON config whose zero_optimization stage is 3)."""
    import json
    from pathlib import Path

    if not deepspeed:
        return False
    if Path(deepspeed).is_file():
        return json.loads(Path(deepspeed).read_text()).get("zero_optimization", {}).get("stage") == 3
    return "zero3" in deepspeed or deepspeed.startswith("gemini")
