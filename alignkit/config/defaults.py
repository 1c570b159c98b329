"""Every per-algorithm default in one table, applied where a flag is left unset and logged when applied.

Flags a user leaves unset arrive as ``None`` (or an empty list); the training code asks this module what
they mean for the chosen algorithm, so a default is written once and is visible here.
"""

from __future__ import annotations

# Built-in training data when --dataset is not given.
DEFAULT_DATASET = {
    "sft": "arith-sft", "dpo": "arith-pref", "cpo": "arith-pref", "simpo": "arith-pref", "orpo": "arith-pref",
    # rm: the pairs a reward head can learn on a CPU budget; on arith-pref's near misses it stays near chance
    # (docs/objectives.md, "Measured on the built-in model").
    "kto": "arith-kto", "rm": "arith-pref-mismatch",
}
DEFAULT_PROMPT_DATASET = "arith-prompts"  # ppo, grpo

# --beta when unset; rm has no beta, ppo's KL weight is --kl_coef.
DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "cpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1, "grpo": 0.04}
# --loss_type when unset; simpo and orpo have a single loss and take no --loss_type.
DEFAULT_LOSS_TYPE: dict[str, str] = {"dpo": "sigmoid", "cpo": "sigmoid", "kto": "kto", "rm": "log_sig", "grpo": "grpo"}
