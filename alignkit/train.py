"""A training run from start to end: arguments → model → data → algorithm → loop.

This is what ``alignkit sft`` and ``alignkit rlhf`` call; from Python::

    from alignkit.config import RunArguments
    from alignkit.train import run_training
    checkpoint = run_training(RunArguments(rlhf_type="dpo", max_steps=10), task="rlhf")
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from alignkit.algorithms.dpo import DPO
from alignkit.algorithms.sft import SFT
from alignkit.checkpoint import new_run_dir
from alignkit.config import RunArguments
from alignkit.data.cache import encode_dataset
from alignkit.data.chat_templates import resolve_template
from alignkit.data.collate import PairCollator, SequenceCollator
from alignkit.data.loading import load_datasets, parse_columns
from alignkit.data.template import ChatEncoder
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
from alignkit.reference import Reference
from alignkit.trainer import LoopConfig, train

logger = logging.getLogger("alignkit")

DEFAULT_DATASET = {"sft": "arith-sft", "dpo": "arith-pref"}


def run_training(args: RunArguments, *, task: str) -> Path:
    """Run SFT (task="sft") or a preference method (task="rlhf", per args.rlhf_type). Returns the last checkpoint."""
    algorithm_name = "sft" if task == "sft" else args.rlhf_type
    if algorithm_name in ("ppo", "grpo"):
        from alignkit.online.run import run_online

        return run_online(args)
    torch.manual_seed(args.seed)
    precision = resolve_dtype(args.dtype)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--dtype fp16 needs a GPU; on CPU use fp32 or bf16")

    # Data first: a bad row should stop the run before minutes are spent loading a model.
    kind = "sft" if algorithm_name == "sft" else "preference"
    datasets = args.dataset or [DEFAULT_DATASET[algorithm_name]]
    train_data, val_data = load_datasets(
        datasets, args.val_dataset, kind, split_dataset_ratio=args.split_dataset_ratio, seed=args.data_seed,
        shuffle=args.dataset_shuffle, columns=parse_columns(args.columns),
        check_dataset_strategy=args.check_dataset_strategy,
    )
    logger.info("Data: %d training rows, %d held-out rows from %s", len(train_data), len(val_data), ", ".join(datasets))

    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path, args.model_revision)
    template = resolve_template(tokenizer, template=args.template, template_config=args.template_config)
    tokenizer.chat_template = template.source  # checkpoints then carry the template that trained them
    encoder = ChatEncoder(
        tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        truncation_strategy=args.truncation_strategy, system=args.system, template=template,
        loss_scale=args.loss_scale,
    )
    encode = {"num_proc": args.dataset_num_proc, "use_cache": args.load_from_cache_file}
    train_rows = encode_dataset(encoder, train_data, "training", **encode)
    val_rows = encode_dataset(encoder, val_data, "held-out", **encode)
    if not train_rows:
        raise AlignkitError("no training rows are left after truncation; raise --max_length")

    model = load_causal_lm(model_path, args.model_revision)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    frozen_reference = None
    if algorithm_name != "sft" and (args.train_type == "full" or args.ref_model):
        frozen_reference = (
            load_causal_lm(resolve_model_path(args.ref_model), None) if args.ref_model else copy.deepcopy(model)
        )
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
            reference=Reference(frozen_reference), beta=beta, loss_type=(args.loss_type or ["sigmoid"])[0],
            label_smoothing=args.label_smoothing, rpo_alpha=args.rpo_alpha,
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
