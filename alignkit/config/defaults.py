"""Every per-algorithm default in one table, applied where a flag is left unset and logged when applied.

Flags a user leaves unset arrive as ``None`` (or an empty list); the training code asks this module what
they mean for the chosen algorithm, so a default is written once and is visible here.
"""

from __future__ import annotations

import logging
from typing import Any

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

# Built-in training data when --dataset is not given.
DEFAULT_DATASET = {
    "sft": "arith-sft", "dpo": "arith-pref", "cpo": "arith-pref", "simpo": "arith-pref", "orpo": "arith-pref",
    # rm: the pairs a reward head can learn on a CPU budget; on arith-pref's near misses it stays near chance
    # (docs/objectives.md, "Measured on the built-in model").
    "kto": "arith-kto", "rm": "arith-pref-mismatch", "gkd": "arith-sft",
}
DEFAULT_PROMPT_DATASET = "arith-prompts"  # ppo, grpo

# --beta when unset; rm has no beta, ppo's KL weight is --kl_coef.
DEFAULT_BETA: dict[str, float] = {
    "dpo": 0.1, "cpo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1, "grpo": 0.04, "gkd": 0.5}
# --loss_type when unset; simpo and orpo have a single loss and take no --loss_type.
DEFAULT_LOSS_TYPE: dict[str, str] = {"dpo": "sigmoid", "cpo": "sigmoid", "kto": "kto", "rm": "log_sig", "grpo": "grpo"}

# --disable_dropout when unset: TRL's configs default to true for DPO, KTO, CPO (simpo), ORPO and the reward
# model, and its PPO trainer always turns dropout off; ms-swift inherits them. grpo: TRL's GRPOConfig says false,
# but alignkit's online loop takes rollout log-probs in a forward of its own, so dropout stays off (online_loop).
# sft: transformers' Trainer leaves dropout as the model has it.
DEFAULT_DISABLE_DROPOUT: dict[str, bool] = {
    "sft": False, "dpo": True, "kto": True, "cpo": True, "simpo": True, "orpo": True, "rm": True, "ppo": True,
    "grpo": True, "gkd": True,
}

# The per-method defaults of flags left unset, and where each comes from: (flag, table).
_TABLES = (("beta", DEFAULT_BETA), ("loss_type", DEFAULT_LOSS_TYPE))

# --task_type values alignkit does not train, and what to use instead.
UNSUPPORTED_TASK_TYPES = {
    "prm": "alignkit has no process-reward-model training; --rlhf_type rm trains an outcome reward model",
}

# Task types trained on ms-swift's embedding/reranker rows (alignkit/algorithms/embedding.py, reranker.py), their
# --loss_type values and the one used when it is unset (None: it must be given). reranker's "model" is the
# model's own one-label loss, which ms-swift falls back to without --loss_type.
RETRIEVAL_TASKS = {
    "embedding": (("infonce", "cosine_similarity", "contrastive", "online_contrastive"), None),
    "reranker": (("pointwise_reranker", "listwise_reranker"), "model"),
    "generative_reranker": (("pointwise_reranker", "listwise_reranker"), "pointwise_reranker"),
}


def resolve(args, method: str) -> dict[str, Any]:
    """The values ``method`` ("sft" or an --rlhf_type) runs with for the flags whose default depends on the
    method, each one the user left unset logged once with its source. ``args`` is not changed (its
    ``args.json`` keeps what the user said). Keys: beta, loss_type (a list), dataset (a list), disable_dropout,
    task_type, and for grpo epsilon_high; for seq_cls also num_labels and problem_type."""
    values: dict[str, Any] = {
        "beta": args.beta,
        "loss_type": list(args.loss_type),
        "dataset": list(args.dataset),
        "disable_dropout": args.disable_dropout,
    }
    for flag, table in _TABLES:
        if method in table and values[flag] in (None, []):
            default = table[method]
            values[flag] = [default] if flag == "loss_type" else default
            logger.info("--%s not set: using %s's default %s (alignkit/config/defaults.py)", flag, method, default)
    if values["disable_dropout"] is None:
        values["disable_dropout"] = DEFAULT_DISABLE_DROPOUT[method]
        if values["disable_dropout"]:
            logger.info("--disable_dropout not set: dropout off for %s, as TRL and ms-swift train it "
                        "(alignkit/config/defaults.py)", method)
    if method in ("ppo", "grpo") and not values["disable_dropout"]:
        raise AlignkitError(
            f"--disable_dropout false: --rlhf_type {method} keeps dropout off, because its rollout log-probs come "
            "from a forward of their own and with dropout the ratio π/π_old would be noise before any update"
        )
    values.update(task(args, method))
    if not values["dataset"] and not args.cached_dataset:  # --cached_dataset alone is training data
        if method == "sft" and values["task_type"] in RETRIEVAL_TASKS:
            raise AlignkitError(f"--task_type {values['task_type']} needs --dataset: rows with messages, "
                                "positive_messages and optionally negative_messages (docs/objectives.md)")
        if method == "sft" and values["task_type"] == "seq_cls":
            raise AlignkitError("--task_type seq_cls needs --dataset: rows with messages (or query) and a label "
                                "column; there is no built-in classification set")
        dataset = DEFAULT_PROMPT_DATASET if method in ("ppo", "grpo") else DEFAULT_DATASET[method]
        values["dataset"] = [dataset]
        logger.info("--dataset not set: using the built-in %s", dataset)
    if method == "grpo":
        values["epsilon_high"] = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        values.update(grpo_estimator_defaults(args))
    return values


# ms-swift ties --scale_rewards and --kl_in_reward to --advantage_estimator (RLHFArguments._init_grpo).
DEFAULT_SCALE_REWARDS = {"grpo": "group", "rloo": "none", "reinforce_plus_plus": "batch"}
DEFAULT_KL_IN_REWARD = {"grpo": False, "rloo": True, "reinforce_plus_plus": True}
SCALE_REWARDS_SPELLINGS = {"true": "group", "false": "none"}  # ms-swift < 3.10's boolean


def grpo_estimator_defaults(args) -> dict[str, Any]:
    """--scale_rewards and --kl_in_reward, each filled in from --advantage_estimator when unset, logged once."""
    estimator = args.advantage_estimator
    scale = SCALE_REWARDS_SPELLINGS.get(args.scale_rewards, args.scale_rewards)
    if scale is None:
        scale = DEFAULT_SCALE_REWARDS[estimator]
        logger.info("--scale_rewards not set: %s for --advantage_estimator %s (ms-swift's default)", scale, estimator)
    kl_in_reward = args.kl_in_reward
    if kl_in_reward is None:
        kl_in_reward = DEFAULT_KL_IN_REWARD[estimator]
        logger.info("--kl_in_reward not set: %s for --advantage_estimator %s (ms-swift's default)",
                    str(kl_in_reward).lower(), estimator)
    return {"scale_rewards": scale, "kl_in_reward": kl_in_reward}


def task(args, method: str) -> dict[str, Any]:
    """--task_type, --num_labels and --problem_type by ms-swift's rules (swift/model/model_meta.py): unset, the
    task is seq_cls when --num_labels is given, else causal_lm; seq_cls needs --num_labels, and its problem type
    defaults to regression for one label, else single_label_classification. --rlhf_type rm is ms-swift's seq_cls
    with one label; the other methods train causal LMs."""
    task_type, num_labels, problem_type = args.task_type, args.num_labels, args.problem_type
    if task_type in UNSUPPORTED_TASK_TYPES:
        raise AlignkitError(f"--task_type {task_type}: {UNSUPPORTED_TASK_TYPES[task_type]}")
    if task_type in RETRIEVAL_TASKS:
        return retrieval_task(task_type, method, args)
    if method != "sft":
        reward_head = method == "rm" and num_labels in (None, 1) and problem_type in (None, "regression")
        if task_type in (None, "causal_lm") and num_labels is None and problem_type is None or reward_head:
            return {"task_type": "seq_cls" if method == "rm" else "causal_lm"}
        raise AlignkitError(
            f"--rlhf_type {method} trains " + ("a reward model: one score per sequence (ms-swift's seq_cls with "
                                              "--num_labels 1, regression)" if method == "rm" else "a causal LM")
            + f"; --task_type/--num_labels/--problem_type ({task_type}, {num_labels}, {problem_type}) do not apply. "
            "Classifiers train with `alignkit sft --task_type seq_cls --num_labels N`"
        )
    if task_type is None:
        task_type = "causal_lm" if num_labels is None else "seq_cls"
        if task_type == "seq_cls":
            logger.info("--task_type not set: seq_cls, since --num_labels is given (as ms-swift)")
    if task_type == "causal_lm":
        if num_labels is not None or problem_type is not None:
            raise AlignkitError("--num_labels and --problem_type serve --task_type seq_cls, not causal_lm")
        return {"task_type": task_type}
    if num_labels is None:
        raise AlignkitError("--task_type seq_cls needs --num_labels (the number of classes; 1 for regression)")
    if problem_type is None:
        problem_type = "regression" if num_labels == 1 else "single_label_classification"
        logger.info("--problem_type not set: %s, since --num_labels is %d (as ms-swift)", problem_type, num_labels)
    if problem_type != "regression" and num_labels == 1:
        raise AlignkitError(f"--problem_type {problem_type} needs --num_labels of at least 2; one label is "
                            "regression")
    return {"task_type": task_type, "num_labels": num_labels, "problem_type": problem_type}


def retrieval_task(task_type: str, method: str, args) -> dict[str, Any]:
    """embedding, reranker, generative_reranker: `alignkit sft` only, with one of the task's --loss_type values
    (its default logged when unset)."""
    if method != "sft":
        raise AlignkitError(f"--task_type {task_type} trains with `alignkit sft`, not --rlhf_type {method}")
    losses, default = RETRIEVAL_TASKS[task_type]
    if args.problem_type is not None or args.num_labels not in (None, 1) or (
            args.num_labels is not None and task_type != "reranker"):
        raise AlignkitError(f"--num_labels/--problem_type do not apply to --task_type {task_type}"
                            + (" (a reranker scores with one label)" if task_type == "reranker" else ""))
    if len(args.loss_type) > 1 or args.loss_type and args.loss_type[0] not in losses:
        raise AlignkitError(f"--loss_type {' '.join(args.loss_type)}: --task_type {task_type} takes one of "
                            f"{', '.join(losses)}")
    if args.loss_type:
        return {"task_type": task_type, "loss_type": list(args.loss_type)}
    if default is None:
        raise AlignkitError(f"--task_type {task_type} needs --loss_type: one of {', '.join(losses)} (infonce for "
                            "rows with positives and optional negatives; the others for pairs with a label)")
    logger.info("--loss_type not set: --task_type %s trains with %s%s", task_type, default,
                " (the model's own one-label loss, mean squared error, as ms-swift)" if default == "model" else "")
    return {"task_type": task_type, "loss_type": [default]}


# Defaults that decide whether a run fits on a GPU, as ms-swift sets them, and where alignkit's differ, why.
FIT_DEFAULTS = {
    "gradient_checkpointing": "on with a GPU, as ms-swift (activations are recomputed in the backward pass: less "
    "memory, ~30% more compute); off on a CPU, where memory is rarely what limits a run and it only costs time",
    "max_length": "the model's own limit, as ms-swift: the smallest of its config's seq_length, "
    "max_position_embeddings, n_positions, model_max_length, seq_len, max_seq_len, max_sequence_length, "
    "max_seq_length (else the tokenizer's model_max_length)",
}


def fit_defaults(args, *, on_gpu: bool, model_max_length: int | None) -> dict[str, Any]:
    """--gradient_checkpointing and --max_length, each filled in when unset (``FIT_DEFAULTS``) and logged
    once. ``model_max_length``: the model's own limit (alignkit.models.load.model_max_length)."""
    values = {"gradient_checkpointing": args.gradient_checkpointing, "max_length": args.max_length}
    if values["gradient_checkpointing"] is None:
        values["gradient_checkpointing"] = on_gpu
        logger.info("--gradient_checkpointing not set: %s (%s)", "on" if on_gpu else "off",
                    FIT_DEFAULTS["gradient_checkpointing"])
    if values["max_length"] is None:
        if model_max_length is None:
            raise AlignkitError("--max_length is not set and the model's config and tokenizer name no maximum "
                                "length; pass --max_length")
        values["max_length"] = model_max_length
        logger.info("--max_length not set: %d, the model's own limit (ms-swift's default)", model_max_length)
    return values


# --metric_for_best_model when unset: ms-swift's (loss; grpo: reward; ppo: none, so no best checkpoint; sft with
# --predict_with_generate: rouge-l, in best_model_metric).
DEFAULT_METRIC_FOR_BEST_MODEL: dict[str, str | None] = {"grpo": "reward", "ppo": None}


def best_model_metric(args, method: str) -> tuple[str | None, bool]:
    """(--metric_for_best_model, --greater_is_better) for ``method``, the unset ones from ms-swift's rules:
    the metric from DEFAULT_METRIC_FOR_BEST_MODEL (else loss), greater is better unless its name says loss."""
    metric = args.metric_for_best_model
    if metric is None and method == "sft" and args.predict_with_generate:  # the generated answers' ROUGE-L
        metric = "rouge-l"
    if metric is None:
        metric = DEFAULT_METRIC_FOR_BEST_MODEL.get(method, "loss")
    greater = args.greater_is_better
    if greater is None:
        greater = metric is not None and "loss" not in metric
    return metric, greater
