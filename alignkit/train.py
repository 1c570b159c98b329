"""A training run from start to end: arguments → model → data → algorithm → loop.

This is what ``alignkit sft`` and ``alignkit rlhf`` call; from Python::

    from alignkit.config import RunArguments
    from alignkit.train import run_training
    checkpoint = run_training(RunArguments(rlhf_type="dpo", max_steps=10), task="rlhf")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from alignkit.algorithms.cpo import CPO, SimPO
from alignkit.algorithms.dpo import DPO
from alignkit.algorithms.kto import KTO, check_kto_rows
from alignkit.algorithms.orpo import ORPO
from alignkit.algorithms.rm import RewardModeling
from alignkit.algorithms.sft import SFT
from alignkit.checkpoint import new_run_dir
from alignkit.config import RunArguments
from alignkit.config_checks import check_run_arguments
from alignkit.data.cache import encode_dataset
from alignkit.data.chat_templates import resolve_template
from alignkit.data.collate import (
    EncodedPair,
    EncodedUnpaired,
    PairCollator,
    SequenceCollator,
    UnpairedCollator,
)
from alignkit.data.loading import load_datasets, parse_columns
from alignkit.data.rows import PreferenceRow, UnpairedRow
from alignkit.data.template import ChatEncoder
from alignkit.device_map import check_trainable, refuse_for_vision, resolve_flags, split_map
from alignkit.distributed import on_main, process_state
from alignkit.engines import check_available, resolve_engine
from alignkit.errors import AlignkitError
from alignkit.losses import DEFAULT_BETA, DEFAULT_LOSS_TYPE
from alignkit.model import (
    add_lora,
    count_parameters,
    load_adapters,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from alignkit.packing import Layout, supports_packing
from alignkit.reference import make_reference
from alignkit.reference_cache import visited_batches
from alignkit.resume import check_resume_args, data_fingerprint, find_checkpoint, resume_run_dir
from alignkit.reward_model import RewardModel
from alignkit.trainer import LoopConfig, train
from alignkit.vision.model import is_vision_model

logger = logging.getLogger("alignkit")

# Built-in training data when --dataset is not given.
DEFAULT_DATASET = {
    "sft": "arith-sft", "dpo": "arith-pref", "cpo": "arith-pref", "simpo": "arith-pref", "orpo": "arith-pref",
    # rm: the pairs a reward head can learn on a CPU budget; on arith-pref's near misses it stays near chance
    # (docs/objectives.md, "Measured on the built-in model").
    "kto": "arith-kto", "rm": "arith-pref-mismatch",
}


def run_training(args: RunArguments, *, task: str) -> Path:
    """Run SFT (task="sft") or a preference method (task="rlhf", per args.rlhf_type). Returns the last checkpoint."""
    algorithm_name = "sft" if task == "sft" else args.rlhf_type
    check_run_arguments(args)
    if algorithm_name in ("ppo", "grpo"):
        from alignkit.online.run import run_online

        return run_online(args)
    resume = find_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    torch.manual_seed(args.seed)
    precision = resolve_dtype(args.dtype)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--dtype fp16 needs a GPU; on CPU use fp32 or bf16")
    engine = resolve_engine(deepspeed=args.deepspeed, fsdp=args.fsdp, plugin=args.plugin, tp=args.tp, pp=args.pp,
                            sp=args.sp, batch_size=args.per_device_train_batch_size,
                            gradient_accumulation_steps=args.gradient_accumulation_steps,
                            max_grad_norm=args.max_grad_norm, precision=precision)
    # Vision-language models train on one device per process: no split unless asked for (which stops below).
    device_map, max_memory = resolve_flags(args.device_map, args.device_max_memory,
                                           engine=engine.source if engine else None,
                                           allow_default=not (args.model and is_vision_model(os.path.expanduser(args.model))))
    if engine is not None:
        check_available(engine)
        logger.info("Engine: %s (%s)", engine.kind, engine.source)
    # Flags first, then data: a bad flag or row should stop the run before minutes are spent loading a model.
    algorithm = build_algorithm(args, algorithm_name)

    kind = {"sft": "sft", "kto": "unpaired"}.get(algorithm_name, "preference")
    datasets = args.dataset or [DEFAULT_DATASET[algorithm_name]]
    train_data, val_data = load_datasets(
        datasets, args.val_dataset, kind, split_dataset_ratio=args.split_dataset_ratio, seed=args.data_seed,
        shuffle=args.dataset_shuffle, columns=parse_columns(args.columns),
        check_dataset_strategy=args.check_dataset_strategy,
    )
    logger.info("Data: %d training rows, %d held-out rows from %s", len(train_data), len(val_data), ", ".join(datasets))

    model_path = resolve_model_path(args.model)
    if is_vision_model(model_path):  # images in the rows, a processor, pixel inputs: docs/vision.md
        refuse_for_vision(args.device_map, args.device_max_memory)
        from alignkit.vision.train import run_vision_training

        return run_vision_training(args, algorithm, algorithm_name, model_path, train_data, val_data, resume, precision)
    tokenizer = load_tokenizer(model_path, args.model_revision)
    template = resolve_template(tokenizer, template=args.template, template_config=args.template_config)
    tokenizer.chat_template = template.source  # checkpoints then carry the template that trained them
    encoder = ChatEncoder(
        tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        truncation_strategy=args.truncation_strategy, system=args.system, template=template,
        loss_scale=args.loss_scale,
    )
    encode = {"num_proc": args.dataset_num_proc, "use_cache": args.load_from_cache_file}
    train_rows = with_row_fields(encode_dataset(encoder, train_data, "training", **encode), train_data)
    val_rows = with_row_fields(encode_dataset(encoder, val_data, "held-out", **encode), val_data)
    if not train_rows:
        raise AlignkitError(
            f"no training rows are left after truncation: all {len(train_data)} rows of {', '.join(datasets)} are longer than "
            f"--max_length {args.max_length}; raise it or choose another --truncation_strategy"
        )
    if isinstance(algorithm, KTO):
        train_rows, val_rows = check_kto_rows(algorithm, train_rows, val_rows, args.per_device_train_batch_size,
                                              args.per_device_eval_batch_size)
    resolved = {**args.to_dict(), "model": model_path, "algorithm": algorithm_name, "dtype": precision,
                "train_rows": len(train_rows), "train_data_sha256": data_fingerprint(train_rows),
                # The data order follows the global batch (per-device batch × processes): resume with the same.
                "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if resume is not None:
        check_resume_args(resume, resolved, allow=args.ignore_args_mismatch)

    model = load_causal_lm(model_path, args.model_revision, device_map=device_map, max_memory=max_memory)
    check_trainable(model)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if isinstance(algorithm, SFT):
        collate = SequenceCollator(tokenizer.pad_token_id)
    elif isinstance(algorithm, KTO):  # adds the mismatched prompt/completion pairs of the KL estimate
        collate = UnpairedCollator(tokenizer.pad_token_id, kl_pairs=algorithm.needs_kl)
    else:
        collate = PairCollator(tokenizer.pad_token_id)

    # Speed-ups (docs/performance.md): the forward layout of every algorithm, and the reference's
    # log-probs precomputed before any adapter is attached (the starting weights, also on resume).
    layout, reasons = choose_layout(args, algorithm_name, model)
    algorithm.layout = layout
    # With LoRA the adapter-disabled policy is the reference; full fine-tuning needs a frozen copy of the
    # starting weights, or the user's --ref_model; --precompute_ref_log_probs keeps neither.
    uses_reference = isinstance(algorithm, KTO) or (isinstance(algorithm, DPO) and not algorithm.reference_free)
    precompute = uses_reference and args.precompute_ref_log_probs
    if not uses_reference:
        reasons["precomputed reference log-probs"] = (
            "--reference_free" if isinstance(algorithm, DPO) else f"{algorithm_name} has no reference model")
    if uses_reference:
        processes = process_state()
        algorithm.reference = make_reference(
            model, ref_model=args.ref_model, full=args.train_type == "full", precompute=precompute,
            batches=reference_batches(train_rows, val_rows, loop_config(args, precision), whole=isinstance(algorithm, KTO),
                                      world_size=processes.num_processes, rank=processes.process_index)
            if precompute else [],
            collate=collate, layout=layout, template=template.source, max_length=args.max_length,
            precision=precision, device=processes.device, ld_alpha=getattr(algorithm, "ld_alpha", None),
        )
    log_speedups(layout, precompute=precompute, precision=precision,
                 gradient_checkpointing=args.gradient_checkpointing, reasons=reasons)
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
    if isinstance(algorithm, RewardModeling):
        model = RewardModel(model)  # the scalar head is trained in full, LoRA or not
    trainable, total = count_parameters(model)
    logger.info("Model %s: %s training, %d of %d parameters trainable (%.2f%%)", model_path, args.train_type,
                trainable, total, 100 * trainable / total)

    def make_run_dir() -> Path:
        if resume is None:
            run_dir = new_run_dir(args.output_dir)
            (run_dir / "args.json").write_text(json.dumps(resolved, indent=2, default=str))
            return run_dir
        return resume_run_dir(resume, args.output_dir, resolved)

    run_dir = on_main(make_run_dir)  # one directory for all processes of a distributed run
    logger.info("Run directory: %s", run_dir)
    return train(
        model=model,
        tokenizer=tokenizer,
        algorithm=algorithm,
        train_rows=train_rows,
        val_rows=val_rows,
        collate=collate,
        config=dataclasses.replace(loop_config(args, precision), resume_from_checkpoint=str(resume) if resume else None,
                                   engine=engine.accelerator_kwargs() if engine else None),
        run_dir=run_dir,
        args_for_checkpoint=resolved,
        row_sources=[row.source for row in train_data],
    )


def build_algorithm(args: RunArguments, name: str):
    """The algorithm object for ``name`` ("sft" or an --rlhf_type), with defaults applied from the tables in
    alignkit/losses.py (logged) and every flag combination checked by the loss functions."""
    if name == "sft":
        return SFT()
    if name == "rm" and args.beta is not None:
        logger.warning("--beta has no effect on --rlhf_type rm")
    if name in ("simpo", "orpo") and args.loss_type:
        raise AlignkitError(f"--rlhf_type {name} has a single loss and takes no --loss_type "
                            f"(got {' '.join(args.loss_type)})")
    loss_types = list(args.loss_type)
    if not loss_types and name in DEFAULT_LOSS_TYPE:
        loss_types = [DEFAULT_LOSS_TYPE[name]]
    if name != "dpo" and len(loss_types) > 1:
        raise AlignkitError(f"--rlhf_type {name} takes one --loss_type, got {' '.join(loss_types)}; "
                            "several are mixed by --rlhf_type dpo only")
    if args.loss_weights and name != "dpo":
        raise AlignkitError("--loss_weights mixes --rlhf_type dpo loss types; it has no effect here")
    beta = args.beta
    if beta is None and name in DEFAULT_BETA:
        beta = DEFAULT_BETA[name]
        logger.info("--beta not set: using %s's default %s (DEFAULT_BETA in alignkit/losses.py)", name, beta)
    try:
        if name == "dpo":
            return DPO(
                beta=beta, loss_types=tuple(loss_types), loss_weights=tuple(args.loss_weights) or None,
                label_smoothing=args.label_smoothing, rpo_alpha=args.rpo_alpha, reference_free=args.reference_free,
                ld_alpha=args.ld_alpha, discopop_tau=args.discopop_tau, f_divergence_type=args.f_divergence_type,
                f_alpha_divergence_coef=args.f_alpha_divergence_coef, convention=args.loss_convention,
            )
        if name == "simpo" or loss_types == ["simpo"]:  # `--rlhf_type cpo --loss_type simpo` is TRL's spelling
            return SimPO(beta=beta, gamma=args.simpo_gamma, label_smoothing=args.label_smoothing,
                         cpo_alpha=args.cpo_alpha)
        if name == "cpo":
            return CPO(beta=beta, loss_type=loss_types[0], label_smoothing=args.label_smoothing,
                       cpo_alpha=args.cpo_alpha)
        if name == "orpo":
            return ORPO(beta=beta)
        if name == "kto":
            return KTO(beta=beta, desirable_weight=args.desirable_weight, undesirable_weight=args.undesirable_weight,
                       loss_type=loss_types[0])
        if name == "rm":
            return RewardModeling(loss_type=loss_types[0], center_rewards_coefficient=args.center_rewards_coefficient)
    except ValueError as error:
        raise AlignkitError(f"--rlhf_type {name}: {error}") from error
    raise AlignkitError(f"unknown --rlhf_type {name}")



def choose_layout(args: RunArguments, algorithm_name: str, model) -> tuple[Layout, dict[str, str]]:
    """The forward layout this run's algorithm uses, and why a speed-up asked for is off."""
    reasons: dict[str, str] = {}
    padding_free = args.padding_free
    if padding_free and split_map(model) is not None:
        # The packed logits mask reaches the model on its first device, the last hidden states sit on its last.
        padding_free = False
        reasons["padding-free packing"] = "a model split by --device_map runs padded batches"
    elif padding_free and not supports_packing(model):
        padding_free = False
        reasons["padding-free packing"] = f"needs sdpa or eager attention, not {model.config._attn_implementation}"
        logger.warning("--padding_free %s: using padded batches", reasons["padding-free packing"])
    prefix_sharing = padding_free and args.prefix_sharing
    if args.prefix_sharing and not padding_free and "padding-free packing" in reasons:
        reasons["prompt-prefix sharing"] = "needs padding-free packing"
    return Layout(padding_free=padding_free, prefix_sharing=prefix_sharing), reasons


def reference_batches(train_rows: list, val_rows: list, config: LoopConfig, *, whole: bool = False,
                      world_size: int = 1, rank: int = 0) -> list[list]:
    """The micro-batches this process's loop and evaluation will form, for the one-off reference pass: its
    shard of the training batches (each row once, or every batch ``whole`` for KTO's in-batch KL pairs) and,
    on the main process, which evaluates alone, the held-out batches."""
    visited = visited_batches(len(train_rows), config, world_size=world_size, rank=rank, dedup=not whole)
    train = [[train_rows[i] for i in batch] for batch in visited]
    size = config.eval_batch_size
    held_out = [val_rows[i : i + size] for i in range(0, len(val_rows), size)] if rank == 0 else []
    return train + held_out


def log_speedups(layout: Layout, *, precompute: bool, precision: str, gradient_checkpointing: bool,
                 reasons: dict[str, str] | None = None) -> None:
    """One line saying which speed-ups this run has on and off, and why one asked for is off
    (docs/performance.md measures each)."""
    reasons = reasons or {}
    speedups = {
        "padding-free packing": layout.padding_free,
        "prompt-prefix sharing": layout.prefix_sharing,
        "precomputed reference log-probs": precompute,
        "bf16 autocast": precision == "bf16",
        "LM head on labelled positions only": True,
        "gradient checkpointing": gradient_checkpointing,
    }
    off = [f"{k} ({reasons[k]})" if k in reasons else k for k, v in speedups.items() if not v]
    logger.info("Speed-ups on: %s; off: %s", ", ".join(k for k, v in speedups.items() if v) or "none",
                ", ".join(off) or "none")


def with_row_fields(items: list, rows: list) -> list:
    """Attach what the losses need besides tokens: a pair's RM margin, a KTO row's label."""
    out = []
    for index, encoded in items:
        row = rows[index]
        if isinstance(row, PreferenceRow):
            encoded = EncodedPair(encoded[0], encoded[1], margin=row.margin)
        elif isinstance(row, UnpairedRow):
            encoded = EncodedUnpaired(encoded, row.label)
        out.append((index, encoded))
    return out


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
        max_nonfinite_steps=args.max_nonfinite_steps,
    )
