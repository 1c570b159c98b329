"""Value checks on a training run's flags, so a bad value stops the run at once with the flag's name.

argparse checks types and choices; these are the ranges (a batch size of 0, a NaN learning rate, a
dropout of 2) that would otherwise surface as a ZeroDivisionError or a library's ValueError mid-run.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from alignkit.config.defaults import RETRIEVAL_TASKS, UNSUPPORTED_TASK_TYPES
from alignkit.config.model_checks import check_model_flags
from alignkit.config.multi_turn_checks import check_multi_turn_flags
from alignkit.config.online_checks import check_online_flags
from alignkit.config.run import RunArguments
from alignkit.data.template import parse_loss_scale
from alignkit.errors import AlignkitError
from alignkit.losses.preference import DPO_LOSS_TYPES

logger = logging.getLogger("alignkit")

AT_LEAST_ONE = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "logging_steps",
    "save_steps", "lora_rank", "max_nonfinite_steps",
)
AT_LEAST_ONE_IF_SET = (
    "max_prompt_length", "eval_steps", "packing_length", "max_pixels", "max_length", "num_labels",
)
# name -> (low, high, high included)
RANGES = {
    "learning_rate": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
    "warmup_ratio": (0.0, 1.0, True),
    "lora_dropout": (0.0, 1.0, False),
    "adam_beta1": (0.0, 1.0, False),
    "adam_beta2": (0.0, 1.0, False),
    "adam_epsilon": (0.0, math.inf, False),
    "label_smoothing": (0.0, 0.5, True),
    "warmup_steps": (0, math.inf, False),
    "lora_alpha": (0, math.inf, False),
}
FINITE_IF_SET = ("max_grad_norm", "beta", "rpo_alpha")


def check_push_to_hub(args: RunArguments) -> None:
    """--push_to_hub uploads when training ends: what it needs is checked before any training."""
    if not args.push_to_hub:
        return
    if not args.hub_model_id:
        raise AlignkitError("--push_to_hub needs --hub_model_id (the repository, e.g. me/my-model)")
    if args.hub_strategy != "end":
        raise AlignkitError(f"--hub_strategy {args.hub_strategy}: alignkit uploads once, when training ends "
                            "(--hub_strategy end)")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise AlignkitError("--push_to_hub: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); train "
                            "without it and upload the checkpoint later (`hf upload REPO DIR`)")


def check_run_arguments(args: RunArguments, method: str | None = None) -> None:
    """``method``: "sft" or the --rlhf_type (unset: --rlhf_type's)."""
    check_push_to_hub(args)
    for name in AT_LEAST_ONE:
        _at_least_one(name, getattr(args, name))
    for name in AT_LEAST_ONE_IF_SET:
        if getattr(args, name) is not None:
            _at_least_one(name, getattr(args, name))
    for name, (low, high, high_included) in RANGES.items():
        value = getattr(args, name)
        if not (low <= value < high or (high_included and value == high)):
            bound = "]" if high_included else ")"
            raise AlignkitError(f"--{name} {value}: expected a value in [{low}, {high}{bound}")
    for name in FINITE_IF_SET:
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise AlignkitError(f"--{name} {value}: expected a finite number")
    if args.max_steps <= 0 and not (math.isfinite(args.num_train_epochs) and args.num_train_epochs > 0):
        raise AlignkitError(
            f"--num_train_epochs {args.num_train_epochs}: expected a positive number (or set --max_steps)"
        )
    if args.dataloader_num_workers < 0:
        raise AlignkitError(f"--dataloader_num_workers {args.dataloader_num_workers}: expected 0 or more")
    if args.sequence_parallel_size < 1:
        raise AlignkitError(f"--sequence_parallel_size {args.sequence_parallel_size}: expected 1 or more")
    if args.sequence_parallel_size > 1 and (method or args.rlhf_type) in ("ppo", "grpo", "gkd"):
        raise AlignkitError(f"--sequence_parallel_size with --rlhf_type {method or args.rlhf_type}: alignkit splits "
                            "the sequences of offline training only (sft and the offline rlhf types); online rollouts "
                            "run whole sequences per process")
    if args.sequence_parallel_size > 1 and (args.device_map or args.device_max_memory):
        raise AlignkitError("--sequence_parallel_size with --device_map: a model split across devices runs in one "
                            "process; sequence parallelism needs one process per GPU")
    check_online_flags(args)
    check_multi_turn_flags(args)
    tuner = args.train_type
    if tuner in ("adapter", "longlora") and (method or args.rlhf_type) not in ("sft", "dpo", "cpo", "simpo", "orpo",
                                                                                "kto"):
        raise AlignkitError(f"--tuner_type {tuner} with {method or args.rlhf_type}: it trains with sft and the offline "
                            "preference methods (dpo, cpo, simpo, orpo, kto); use --tuner_type lora")
    if tuner in ("adapter", "longlora") and (args.task_type or "causal_lm") != "causal_lm":
        raise AlignkitError(f"--tuner_type {tuner} with --task_type {args.task_type}: only causal_lm (generation) is "
                            "supported; use --tuner_type lora")
    if args.sequence_parallel_size > 1 and (tuner == "longlora" or args.init_weights.lower() == "lora-ga"):
        what = "--tuner_type longlora: its attention groups are quarters of the whole row" if tuner == "longlora" \
            else "--init_weights lora-ga: its gradient is estimated on whole rows before training"
        raise AlignkitError(f"--sequence_parallel_size with {what}; run without sequence parallelism")
    if args.init_weights.lower() == "lora-ga" and (method or args.rlhf_type) != "sft":
        raise AlignkitError(f"--init_weights lora-ga with {method or args.rlhf_type}: LoRA-GA estimates the gradient "
                            "of the SFT loss; it is supported for `alignkit sft` (use --init_weights true|pissa|olora)")
    if args.rlhf_type in ("ppo", "grpo") and (args.device_map or args.device_max_memory):
        raise AlignkitError(f"--device_map is not supported for --rlhf_type {args.rlhf_type}; run one process per GPU "
                            "(NPROC_PER_NODE) instead")
    check_model_flags(args)
    # Before --loss_type: a task alignkit does not train is named first.
    if args.task_type in UNSUPPORTED_TASK_TYPES:
        raise AlignkitError(f"--task_type {args.task_type}: {UNSUPPORTED_TASK_TYPES[args.task_type]}")
    if (method or args.rlhf_type) == "sft" and args.task_type in RETRIEVAL_TASKS:
        pass  # their --loss_type values are checked with the task (config.defaults.retrieval_task)
    elif (method or args.rlhf_type) == "sft":
        unknown = [t for t in args.loss_type if t not in ("cross_entropy", "loss_scale")]
        if "loss_scale" in args.loss_type and not unknown:
            # ms-swift 3.x's loss_scale_func: sum(CE x loss_scale) / trained tokens. alignkit's --loss_scale values
            # weigh a token 1 (trained) or 0 (label -100), so that is sft's cross-entropy.
            logger.info("--loss_type loss_scale: cross-entropy weighted per token by --loss_scale %s (1 on trained "
                        "tokens, 0 elsewhere), which is sft's cross_entropy", args.loss_scale)
        if unknown:
            raise AlignkitError(
                f"--loss_type {' '.join(unknown)}: sft trains with cross_entropy (ms-swift's default sft loss); "
                "ms-swift's other loss types belong to --task_type embedding (infonce, cosine_similarity, contrastive, "
                "online_contrastive) and reranker/generative_reranker (pointwise_reranker, listwise_reranker); "
                "per-token weights are --loss_scale")
    elif (method or args.rlhf_type) == "dpo":
        unknown = [t for t in args.loss_type if t not in DPO_LOSS_TYPES]
        if unknown:
            raise AlignkitError(
                f"--loss_type {' '.join(unknown)}: unknown DPO loss; choose from {', '.join(DPO_LOSS_TYPES)}"
            )


# Methods whose rows --packing packs (ms-swift packs sft, dpo and kto; alignkit's pair methods share dpo's
# collation and forwards, so cpo, simpo, orpo and rm pack too).
PACKING_METHODS = ("sft", "dpo", "cpo", "simpo", "orpo", "rm")


def check_data_flags(args: RunArguments, method: str) -> None:
    """The data flags that depend on the method (``sft`` or an --rlhf_type) or on each other."""
    scale = parse_loss_scale(args.loss_scale)  # unknown or refused names stop here, before any data is read
    if scale.weighting and (method != "sft" or args.task_type not in (None, "causal_lm")):
        raise AlignkitError(f"--loss_scale {args.loss_scale}: per-token weights of tool calls apply to sft's "
                            "cross-entropy; this run's loss takes none")
    if args.truncation_strategy == "split":
        raise AlignkitError("--truncation_strategy split cuts long texts into several rows for pre-training (`swift "
                            "pt`), which alignkit does not have; use delete, left, right or raise")
    for flag in ("model_name", "model_author"):
        if len(getattr(args, flag)) > 2:
            raise AlignkitError(f"--{flag}: expected one name or two (Chinese, then English), got "
                                f"{len(getattr(args, flag))}")
    if args.interleave_prob and len(args.interleave_prob) != len(args.dataset):
        raise AlignkitError(f"--interleave_prob: {len(args.interleave_prob)} probabilities for {len(args.dataset)} "
                            "--dataset values; give one per dataset")
    if args.streaming and args.max_steps <= 0:
        raise AlignkitError("--streaming true needs --max_steps: a stream's length is not known in advance (as in "
                            "ms-swift)")
    if args.shuffle_buffer_size < 1:
        raise AlignkitError(f"--shuffle_buffer_size {args.shuffle_buffer_size}: expected a positive integer")
    if args.packing_num_proc < 1:
        raise AlignkitError(f"--packing_num_proc {args.packing_num_proc}: expected a positive integer")
    if not args.packing:
        return
    if method == "sft" and args.task_type in RETRIEVAL_TASKS and args.task_type != "generative_reranker":
        raise AlignkitError(f"--packing with --task_type {args.task_type} is not supported: each conversation is "
                            "scored at its own last token, in padded batches; drop --packing (the generative "
                            "reranker packs)")
    if method == "kto":
        raise AlignkitError("--packing with --rlhf_type kto is not supported: KTO estimates its KL term from "
                            "mismatched rows within a micro-batch, which packs of varying size cannot promise; "
                            "batches already run without padding (--padding_free, on by default)")
    if method == "ppo":
        raise AlignkitError("--packing with --rlhf_type ppo is not supported (nor in ms-swift): rollouts run as "
                            "padding-free batches already (--padding_free, on by default)")
    if method == "grpo" and not args.padding_free:
        raise AlignkitError("--packing with --rlhf_type grpo means padding-free forwards of the rollouts (as in "
                            "ms-swift, whose grpo never packs the prompt dataset); drop --padding_free false")
    if method not in PACKING_METHODS + ("grpo",):
        raise AlignkitError(f"--packing: not supported for {method}; it packs {', '.join(PACKING_METHODS)}")


def warn_flags_without_effect(args: RunArguments, method: str) -> list[str]:
    """One warning per flag set (to other than its default) that does not serve ``method`` ("sft" or the
    --rlhf_type), from the flag's own ``applies_to``. Returns the flags named."""
    named = []
    for f in dataclasses.fields(RunArguments):
        serves = f.metadata.get("applies_to")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if serves is None or method in serves or getattr(args, f.name) == default:
            continue
        what = "sft" if method == "sft" else f"--rlhf_type {method}"
        logger.warning("--%s has no effect on %s (it serves %s)", f.name, what, ", ".join(serves))
        named.append(f.name)
    return named


def log_flags_without_work(args) -> list[str]:
    """One line per flag set (to other than its default) that has no work to do in alignkit, saying why
    (the flag's own ``no_effect``). Works for any argument dataclass. Returns the flags named."""
    named = []
    for f in dataclasses.fields(args):
        why = f.metadata.get("no_effect")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if why and getattr(args, f.name) != default:
            logger.info("--%s %s has no effect: %s", f.name, _shown(getattr(args, f.name)), why)
            named.append(f.name)
    return named


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _at_least_one(name: str, value: int) -> None:
    if value < 1:
        raise AlignkitError(f"--{name} {value}: expected a positive integer")
