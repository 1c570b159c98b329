"""A training run from start to end: arguments → model → data → algorithm → loop.

This is what ``alignkit sft`` and ``alignkit rlhf`` call; from Python::

    from alignkit.config import RunArguments
    from alignkit.train import run_training
    checkpoint = run_training(RunArguments(rlhf_type="dpo", max_steps=10), task="rlhf")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from alignkit.algorithms.dpo import DPO
from alignkit.algorithms.sft import SFT
from alignkit.checkpoint import new_run_dir
from alignkit.config import RunArguments
from alignkit.data.collate import PairCollator, SequenceCollator
from alignkit.data.loading import load_datasets
from alignkit.data.rows import ConversationRow, PreferenceRow
from alignkit.data.template import ChatEncoder, Truncated
from alignkit.errors import AlignkitError
from alignkit.losses import DEFAULT_BETA
from alignkit.model import (
    add_lora,
    count_parameters,
    load_adapters,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from alignkit.packing import supports_packing
from alignkit.reference import make_reference
from alignkit.reference_cache import visited_batches
from alignkit.trainer import LoopConfig, train

logger = logging.getLogger("alignkit")

DEFAULT_DATASET = {"sft": "arith-sft", "dpo": "arith-pref"}


def run_training(args: RunArguments, *, task: str) -> Path:
    """Run SFT (task="sft") or a preference method (task="rlhf", per args.rlhf_type). Returns the last checkpoint."""
    algorithm_name = "sft" if task == "sft" else args.rlhf_type
    torch.manual_seed(args.seed)
    precision = resolve_dtype(args.dtype)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--dtype fp16 needs a GPU; on CPU use fp32 or bf16")

    # Data first: a bad row should stop the run before minutes are spent loading a model.
    kind = "sft" if algorithm_name == "sft" else "preference"
    datasets = args.dataset or [DEFAULT_DATASET[algorithm_name]]
    train_data, val_data = load_datasets(
        datasets, args.val_dataset, kind, split_dataset_ratio=args.split_dataset_ratio, seed=args.data_seed,
        shuffle=args.dataset_shuffle,
    )
    logger.info("Data: %d training rows, %d held-out rows from %s", len(train_data), len(val_data), ", ".join(datasets))

    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path, args.model_revision)
    encoder = ChatEncoder(
        tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        truncation_strategy=args.truncation_strategy, system=args.system,
    )
    train_rows = encode_rows(encoder, train_data, "training")
    val_rows = encode_rows(encoder, val_data, "held-out")
    if not train_rows:
        raise AlignkitError("no training rows are left after truncation; raise --max_length")

    model = load_causal_lm(model_path, args.model_revision)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    reference = None
    if algorithm_name != "sft":
        padding_free = args.padding_free and supports_packing(model)
        if args.padding_free and not padding_free:
            logger.warning("--padding_free needs sdpa or eager attention, not %s: using padded batches",
                           model.config._attn_implementation)
        layout = {"padding_free": padding_free, "prefix_sharing": padding_free and args.prefix_sharing}
        reference = make_reference(
            model, ref_model=args.ref_model, full=args.train_type == "full", precompute=args.precompute_ref_log_probs,
            batches=reference_batches(train_rows, val_rows, loop_config(args, precision)),
            collate=PairCollator(tokenizer.pad_token_id), template=tokenizer.chat_template,
            max_length=args.max_length, precision=precision, **layout,
        )
        log_speedups(layout, precompute=args.precompute_ref_log_probs, precision=precision,
                     gradient_checkpointing=args.gradient_checkpointing)
    if args.train_type == "lora":
        if args.adapters:
            model = load_adapters(model, args.adapters, trainable=True)
        else:
            model = add_lora(
                model, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                target_modules=args.lora_target_modules,
            )
        if args.gradient_checkpointing:
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    logger.info("Model %s: %s training, %d of %d parameters trainable (%.2f%%)", model_path, args.train_type,
                trainable, total, 100 * trainable / total)

    if algorithm_name == "sft":
        algorithm, collate = SFT(), SequenceCollator(tokenizer.pad_token_id)
    else:
        beta = args.beta
        if beta is None:
            beta = DEFAULT_BETA[algorithm_name]
            logger.info("--beta not set: using %s's default %s", algorithm_name, beta)
        algorithm = DPO(
            reference=reference, beta=beta, loss_type=args.loss_type[0],
            label_smoothing=args.label_smoothing, rpo_alpha=args.rpo_alpha, **layout,
        )
        collate = PairCollator(tokenizer.pad_token_id)

    run_dir = new_run_dir(args.output_dir)
    resolved = {**args.to_dict(), "model": model_path, "algorithm": algorithm_name, "dtype": precision}
    (run_dir / "args.json").write_text(json.dumps(resolved, indent=2, default=str))
    logger.info("Run directory: %s", run_dir)
    return train(
        model=model,
        tokenizer=tokenizer,
        algorithm=algorithm,
        train_rows=train_rows,
        val_rows=val_rows,
        collate=collate,
        config=loop_config(args, precision),
        run_dir=run_dir,
        args_for_checkpoint=resolved,
    )


def reference_batches(train_rows: list, val_rows: list, config: LoopConfig) -> list[list]:
    """The micro-batches the loop and its evaluation will form, for the one-off reference pass."""
    train = [[train_rows[i] for i in batch] for batch in visited_batches(len(train_rows), config)]
    size = config.eval_batch_size
    return train + [val_rows[i : i + size] for i in range(0, len(val_rows), size)]


def log_speedups(layout: dict, *, precompute: bool, precision: str, gradient_checkpointing: bool) -> None:
    """One line saying which speed-ups this run has on and off (docs/performance.md measures each)."""
    speedups = {
        "padding-free packing": layout["padding_free"],
        "prompt-prefix sharing": layout["prefix_sharing"],
        "precomputed reference log-probs": precompute,
        "bf16 autocast": precision == "bf16",
        "LM head on labelled positions only": True,
        "gradient checkpointing": gradient_checkpointing,
    }
    logger.info("Speed-ups on: %s; off: %s", ", ".join(k for k, v in speedups.items() if v) or "none",
                ", ".join(k for k, v in speedups.items() if not v) or "none")


def encode_rows(encoder: ChatEncoder, rows: list, split: str) -> list:
    """Tokenise canonical rows into (row_id, encoded) pairs, dropping and counting rows that do not fit."""
    encoded, dropped = [], 0
    for index, row in enumerate(rows):
        try:
            if isinstance(row, PreferenceRow):
                encoded.append((index, encoder.encode_pair(row)))
            elif isinstance(row, ConversationRow):
                encoded.append((index, encoder.encode_conversation(row)))
            else:
                raise AlignkitError(f"rows of type {type(row).__name__} cannot be trained by this algorithm")
        except Truncated:
            dropped += 1
    if dropped:
        logger.warning("Dropped %d of %d %s rows longer than --max_length (--truncation_strategy delete)",
                       dropped, len(rows), split)
    return encoded


def loop_config(args: RunArguments, precision: str) -> LoopConfig:
    return LoopConfig(
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        batch_size=args.per_device_train_batch_size,
        eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_betas=(args.adam_beta1, args.adam_beta2),
        adam_epsilon=args.adam_epsilon,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        shuffle=args.dataset_shuffle,
        mixed_precision={"fp32": "no"}.get(precision, precision),
        tensorboard="tensorboard" in args.report_to,
        resume_from_checkpoint=args.resume_from_checkpoint,
    )
