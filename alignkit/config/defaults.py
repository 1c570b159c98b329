"""Every per-algorithm default in one table, applied where a flag is left unset and logged when applied.

Flags a user leaves unset arrive as ``None`` (or an empty list); the training code asks this module what
they mean for the chosen algorithm, so a default is written once and is visible here.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("alignkit")

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

# The per-method defaults of flags left unset, and where each comes from: (flag, table).
_TABLES = (("beta", DEFAULT_BETA), ("loss_type", DEFAULT_LOSS_TYPE))


def resolve(args, method: str) -> dict[str, Any]:
    """The values ``method`` ("sft" or an --rlhf_type) runs with for the flags whose default depends on the
    method, each one the user left unset logged once with its source. ``args`` is not changed (its
    ``args.json`` keeps what the user said). Keys: beta, loss_type (a list), dataset (a list), and for grpo
    epsilon_high."""
    values: dict[str, Any] = {
        "beta": args.beta,
        "loss_type": list(args.loss_type),
        "dataset": list(args.dataset),
    }
    for flag, table in _TABLES:
        if method in table and values[flag] in (None, []):
            default = table[method]
            values[flag] = [default] if flag == "loss_type" else default
            logger.info("--%s not set: using %s's default %s (alignkit/config/defaults.py)", flag, method, default)
    if not values["dataset"]:
        dataset = DEFAULT_PROMPT_DATASET if method in ("ppo", "grpo") else DEFAULT_DATASET[method]
        values["dataset"] = [dataset]
        logger.info("--dataset not set: using the built-in %s", dataset)
    if method == "grpo":
        values["epsilon_high"] = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    return values


# --metric_for_best_model when unset: ms-swift's (loss; grpo: reward; ppo: none, so no best checkpoint).
DEFAULT_METRIC_FOR_BEST_MODEL: dict[str, str | None] = {"grpo": "reward", "ppo": None}


def best_model_metric(args, method: str) -> tuple[str | None, bool]:
    """(--metric_for_best_model, --greater_is_better) for ``method``, the unset ones from ms-swift's rules:
    the metric from DEFAULT_METRIC_FOR_BEST_MODEL (else loss), greater is better unless its name says loss."""
    metric = args.metric_for_best_model
    if metric is None:
        metric = DEFAULT_METRIC_FOR_BEST_MODEL.get(method, "loss")
    greater = args.greater_is_better
    if greater is None:
        greater = metric is not None and "loss" not in metric
    return metric, greater
