"""``alignkit rollout`` (ms-swift's ``swift rollout``): TRL's vLLM server (``trl vllm-serve``) for ``--use_vllm
--vllm_mode server`` training runs, which generate through it with TRL's VLLMClient and push their weights to it
after each optimizer step (alignkit/generation/vllm_server.py). The server is TRL's/vLLM's own; this module only
translates ms-swift's flags into its arguments."""

from __future__ import annotations

import json
import logging
import os

from alignkit.algorithms.scheduler_plugins import check_scheduler
from alignkit.config import rollout_args
from alignkit.config.rollout_args import NO_GYM, RolloutArguments
from alignkit.errors import AlignkitError
from alignkit.generation import engine_info

logger = logging.getLogger("alignkit")

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def check_served(args: RolloutArguments) -> None:
    """What either backend needs: a --model to start from; a multi-turn scheduler alignkit's trainer can run (it
    is announced at /get_engine_type/ and the trainer drives the turns); no gym environments."""
    gym = [flag for flag in ("use_gym_env", "gym_env") if getattr(args, flag)]
    if gym and not args.multi_turn_scheduler:
        raise AlignkitError(f"--{gym[0]}: {NO_GYM}")
    if not args.model:
        raise AlignkitError("alignkit rollout needs --model: the policy's starting weights, which the trainer then "
                            "updates after each step")
    if args.max_turns is not None and args.max_turns < 1:
        raise AlignkitError(f"--max_turns {args.max_turns}: expected 1 or more")
    if args.multi_turn_scheduler:
        check_scheduler(args.multi_turn_scheduler, args.external_plugins, args.gym_env)
        logger.info("--multi_turn_scheduler %s, --max_turns %s%s: announced at %s; the trainer drives the turns "
                    "(as ms-swift's server does here), each a request to this server", args.multi_turn_scheduler,
                    args.max_turns, f", --gym_env {args.gym_env}" if args.gym_env else "", engine_info.ROUTE)
    else:
        for flag, why in (("max_turns", "it limits a multi-turn scheduler's turns"),
                          ("external_plugins", "the server loads plugins for a multi-turn scheduler; reward "
                           "plugins are the trainer's (its own --external_plugins)")):
            if getattr(args, flag):
                logger.info("--%s without --multi_turn_scheduler: no effect (%s)", flag, why)


def serve_arguments(args: RolloutArguments):
    """ms-swift's rollout flags → TRL's ``vllm-serve`` ScriptArguments (what `trl vllm-serve` is given)."""
    check_served(args)
    from trl.scripts.vllm_serve import ScriptArguments

    from alignkit.models.load import resolve_model_path

    return ScriptArguments(
        model=resolve_model_path(args.model), revision=args.model_revision, host=args.host, port=args.port,
        tensor_parallel_size=args.vllm_tensor_parallel_size, data_parallel_size=args.vllm_data_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization, max_model_len=args.vllm_max_model_len,
        enable_prefix_caching=args.vllm_enable_prefix_caching, enforce_eager=args.vllm_enforce_eager,
        dtype=DTYPES.get(args.dtype, args.dtype), log_level=args.log_level, trust_remote_code=args.trust_remote_code)


def check_transformers_rollout(args: RolloutArguments) -> None:
    """What the transformers server does not have: vLLM's parallelism is refused, its engine settings logged."""
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
    # vLLM's server answers /get_engine_type/ through alignkit's middleware, from the environment it inherits.
    os.environ[engine_info.ENVIRONMENT] = json.dumps(engine_info.describe(args, "AsyncLLMEngine"))
    main(script_args, ["--middleware", engine_info.MIDDLEWARE])  # replaces this process with `vllm serve`
    return 0
