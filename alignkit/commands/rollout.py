"""``alignkit rollout`` (ms-swift's ``swift rollout``): TRL's vLLM server (``trl vllm-serve``) for ``--use_vllm
--vllm_mode server`` training runs, which generate through it with TRL's VLLMClient and push their weights to it
after each optimizer step (alignkit/generation/vllm_server.py). The server is TRL's/vLLM's own; this module only
translates ms-swift's flags into its arguments."""

from __future__ import annotations

import logging

from alignkit.config import rollout_args
from alignkit.config.rollout_args import NO_MULTI_TURN, RolloutArguments
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def check_served(args: RolloutArguments) -> None:
    """What either backend needs: a --model to start from; multi-turn schedulers run in the trainer, not here."""
    for flag in ("multi_turn_scheduler", "max_turns", "use_gym_env", "gym_env"):
        if getattr(args, flag):
            raise AlignkitError(f"--{flag}: {NO_MULTI_TURN}")
    if not args.model:
        raise AlignkitError("alignkit rollout needs --model: the policy's starting weights, which the trainer then "
                            "updates after each step")


def serve_arguments(args: RolloutArguments):
    """ms-swift's rollout flags → TRL's ``vllm-serve`` ScriptArguments (what `trl vllm-serve` is given)."""
    check_served(args)
    from trl.scripts.vllm_serve import ScriptArguments

    return ScriptArguments(
        model=args.model, revision=args.model_revision, host=args.host, port=args.port,
        tensor_parallel_size=args.vllm_tensor_parallel_size, data_parallel_size=args.vllm_data_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization, max_model_len=args.vllm_max_model_len,
        enable_prefix_caching=args.vllm_enable_prefix_caching, enforce_eager=args.vllm_enforce_eager,
        dtype=DTYPES.get(args.dtype, args.dtype), log_level=args.log_level, trust_remote_code=args.trust_remote_code)


def check_transformers_rollout(args: RolloutArguments) -> None:
    """What the transformers server does not have: vLLM's engine settings are logged, multi-turn is refused."""
    check_served(args)
    vllm_only = [flag for flag in ("vllm_tensor_parallel_size", "vllm_data_parallel_size")
                 if getattr(args, flag) != 1]
    if vllm_only:
        raise AlignkitError(f"{', '.join('--' + f for f in vllm_only)}: vLLM's parallelism; --infer_backend "
                            "transformers serves one model copy on one device")
    defaults = RolloutArguments()
    engine_only = [f"--{flag}" for flag in ("vllm_gpu_memory_utilization", "vllm_max_model_len",
                                            "vllm_enable_prefix_caching", "vllm_enforce_eager")
                   if getattr(args, flag) != getattr(defaults, flag)]
    if engine_only:
        logger.info("%s: no effect with --infer_backend transformers (they configure vLLM's engine)",
                    ", ".join(engine_only))


def run_rollout(args: RolloutArguments) -> int:
    if args.infer_backend == "transformers":
        from alignkit.commands.rollout_server import run_transformers_rollout

        check_transformers_rollout(args)
        return run_transformers_rollout(args)
    rollout_args.check_server_packages("alignkit rollout")
    script_args = serve_arguments(args)
    from trl.scripts.vllm_serve import main

    logger.info("Starting TRL's vLLM server for %s on %s:%d", args.model, args.host, args.port)
    main(script_args)  # replaces this process with `vllm serve` (TRL's vllm-serve does so)
    return 0
