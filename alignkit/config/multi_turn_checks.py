"""Checks of --multi_turn_scheduler / --max_turns: the combinations multi-turn rollouts do not run."""

from __future__ import annotations

from alignkit.errors import AlignkitError


def check_multi_turn_flags(args) -> None:
    """Raises AlignkitError for what a multi-turn GRPO run cannot do, before anything loads."""
    if args.max_turns is not None and args.max_turns < 1:
        raise AlignkitError(f"--max_turns {args.max_turns}: expected 1 or more")
    if uses_gym(args) and not args.multi_turn_scheduler:
        raise AlignkitError("--use_gym_env / --gym_env: a gym environment is driven by a multi-turn scheduler; add "
                            "--multi_turn_scheduler gym_scheduler (or a scheduler a plugin file builds on it)")
    if not args.multi_turn_scheduler:
        return
    if args.rlhf_type != "grpo":
        raise AlignkitError(f"--multi_turn_scheduler with --rlhf_type {args.rlhf_type}: multi-turn rollouts are "
                            "GRPO's here; the other methods sample one answer per prompt")
    if args.dynamic_sample:
        raise AlignkitError("--dynamic_sample with --multi_turn_scheduler: replacement groups are sampled one turn "
                            "deep; drop one of the two")
    engine_logprobs = [flag for flag in ("async_generate", "rollout_importance_sampling_mode",
                                         "log_rollout_offpolicy_metrics", "off_policy_sequence_mask_delta")
                       if getattr(args, flag) not in (None, False)]
    if engine_logprobs:
        raise AlignkitError(f"--{engine_logprobs[0]} with --multi_turn_scheduler: it reads the rollout engine's "
                            "log-probs of one completion per prompt, and a trajectory's turns are sampled apart, "
                            "with the environment's tokens between them; drop one of the two")


def uses_gym(args) -> bool:
    """--use_gym_env as ms-swift resolves it: unset, it is on when --gym_env names an environment."""
    return bool(args.use_gym_env if args.use_gym_env is not None else args.gym_env)
