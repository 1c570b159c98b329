"""A training run from start to end: arguments → model → data → algorithm → loop.

This is what ``alignkit sft`` and ``alignkit rlhf`` call; from Python::

    from alignkit.config.run import RunArguments
    from alignkit.training.run import run_training
    checkpoint = run_training(RunArguments(rlhf_type="dpo", max_steps=10), task="rlhf")
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from alignkit.algorithms.cpo import CPO, SimPO
from alignkit.algorithms.dpo import DPO
from alignkit.algorithms.embedding import Embedding
from alignkit.algorithms.kto import KTO, check_kto_rows, kl_micro_batches
from alignkit.algorithms.orpo import ORPO
from alignkit.algorithms.reranker import GenerativeReranker, Reranker, yes_no_token_ids
from alignkit.algorithms.rm import RewardModeling
from alignkit.algorithms.seq_cls import SequenceClassification
from alignkit.algorithms.sft import SFT
from alignkit.config.checks import (
    check_data_flags,
    check_run_arguments,
    log_flags_without_work,
    warn_flags_without_effect,
)
from alignkit.config.defaults import resolve
from alignkit.config.run import RunArguments
from alignkit.data.cache import encode_dataset
from alignkit.data.chat_templates import resolve_template
from alignkit.data.collate import (
    ClassificationCollator,
    PaddedTo,
    PairCollator,
    SequenceCollator,
    UnpairedCollator,
    kl_rows,
)
from alignkit.data.encode import with_row_fields
from alignkit.data.group_collate import GroupCollator
from alignkit.data.order import batches_per_epoch, encoded_length, total_steps
from alignkit.data.packing import pack_rows
from alignkit.data.template import ChatEncoder, parse_loss_scale
from alignkit.data.validate import check_class_labels
from alignkit.errors import AlignkitError
from alignkit.models.load import (
    count_parameters,
    disable_dropout,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model_path,
)
from alignkit.models.packing import Layout
from alignkit.models.placement import check_trainable, refuse_for_vision, resolve_flags
from alignkit.models.reference import make_reference
from alignkit.models.reference_cache import visited_batches, visited_steps
from alignkit.models.reward_model import VALUE_HEADS, SequenceRewardModel
from alignkit.training.distributed import process_state
from alignkit.training.generated_eval import GeneratedEvaluation, check_generated_eval, held_out_prompts
from alignkit.training.loop import train
from alignkit.training.loop_config import LoopConfig, loop_config
from alignkit.training.model_setup import (
    WithModelLosses,
    add_special_tokens,
    check_live_reference,
    fit_embeddings,
    is_adapter,
    load_options,
    loop_additions,
    make_trainable,
    prepare_loaded,
    text_targets,
    tuner_settings,
    weights_dtype,
)
from alignkit.training.resume import data_fingerprint
from alignkit.training.run_data import load_training_data
from alignkit.training.runner import (
    join_process_group,
    loop_config_for,
    open_run_dir,
    rows_per_step,
    start_run,
    with_fit_defaults,
)
from alignkit.training.speedups import PACKING_SPEEDUPS, choose_layout, log_speedups
from alignkit.vision.model import is_vision_model

logger = logging.getLogger("alignkit")



def run_training(args: RunArguments, *, task: str) -> Path:
    """Run SFT (task="sft") or a preference method (task="rlhf", per args.rlhf_type). Returns the last checkpoint."""
    algorithm_name = "sft" if task == "sft" else args.rlhf_type
    check_run_arguments(args, algorithm_name)
    check_data_flags(args, algorithm_name)
    warn_flags_without_effect(args, algorithm_name)
    log_flags_without_work(args)
    check_generated_eval(args, algorithm_name)
    if algorithm_name in ("ppo", "grpo"):
        if args.packing:
            logger.info("--packing with grpo: the rollouts' forwards run padding-free (--padding_free); as in "
                        "ms-swift, the prompts are not packed")
        from alignkit.training.online_run import run_online

        return run_online(args, resolve(args, algorithm_name))
    start = start_run(args, algorithm_name, join=False)
    resume, precision = start.resume, start.precision
    # Vision-language models train on one device per process: no split unless asked for (which stops below).
    device_map, max_memory = resolve_flags(
        args.device_map,
        args.device_max_memory,
        engine=start.engine.source if start.engine else None,
        allow_default=not (args.model and is_vision_model(os.path.expanduser(args.model))),
    )
    join_process_group(args)
    start.check_engine()
    # Flags first, then data: a bad flag or row should stop the run before minutes are spent loading a model.
    defaults = resolve(args, algorithm_name)
    algorithm = build_algorithm(args, algorithm_name, defaults)

    kind = algorithm.rows
    datasets = defaults["dataset"]
    train_data, val_data = load_training_data(args, datasets, kind)
    logger.info("Data: %d training rows, %d held-out rows from %s", len(train_data), len(val_data),
                ", ".join(args.cached_dataset + datasets))

    if algorithm.rows == "classification":
        check_class_labels(train_data + val_data, problem_type=algorithm.problem_type, num_labels=algorithm.num_labels)
    model_path = resolve_model_path(args.model)
    # Unset --max_length and --gradient_checkpointing as ms-swift sets them (the model's length; on with a GPU).
    args = with_fit_defaults(args, model_path)
    if is_vision_model(model_path):  # images in the rows, a processor, pixel inputs: docs/vision.md
        refuse_for_vision(args.device_map, args.device_max_memory)
        if args.agent_template or parse_loss_scale(args.loss_scale).weighting:
            raise AlignkitError("--agent_template and the agent --loss_scale weightings are not supported for "
                                "vision-language models: their rows are rendered by the processor's chat template")
        if algorithm_name == "gkd":
            raise AlignkitError("--rlhf_type gkd with a vision-language model is not supported: gkd distils text "
                                "conversations")
        if args.train_type in ("adapter", "longlora"):
            raise AlignkitError(f"--tuner_type {args.train_type} with a vision-language model is not supported; use "
                                "--tuner_type lora or lora_llm")
        if args.packing or not args.use_chat_template:
            raise AlignkitError("--packing and --use_chat_template false are not supported for vision-language "
                                "models: rows with images run padded, rendered by the processor's chat template")
        from alignkit.training.vision_run import run_vision_training

        return run_vision_training(args, algorithm, algorithm_name, model_path, train_data, val_data, start,
                                   dropout_off=defaults["disable_dropout"])
    tokenizer = load_tokenizer(model_path, args.model_revision)
    add_special_tokens(args, tokenizer)
    template = resolve_template(tokenizer, template=args.template, template_config=args.template_config)
    tokenizer.chat_template = template.source  # checkpoints then carry the template that trained them
    encoder = ChatEncoder(
        tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        truncation_strategy=args.truncation_strategy, system=args.system, template=template,
        loss_scale=args.loss_scale, use_chat_template=args.use_chat_template, agent_template=args.agent_template,
    )
    encode = {"num_proc": args.dataset_num_proc, "use_cache": args.load_from_cache_file}
    train_rows = with_row_fields(encode_dataset(encoder, train_data, "training", **encode), train_data)
    val_rows = with_row_fields(encode_dataset(encoder, val_data, "held-out", **encode), val_data)
    if not train_rows:
        raise AlignkitError(
            f"no training rows are left after truncation: all {len(train_data)} rows of {', '.join(datasets)} are "
            f"longer than --max_length {args.max_length}; raise it or choose another --truncation_strategy"
        )
    if algorithm.rows == "unpaired":
        train_rows, val_rows = check_kto_rows(algorithm, train_rows, val_rows, rows_per_step(args))
    encoded_rows = len(train_rows)
    unpacked_rows = [encoded for _, encoded in train_rows]  # LoRA-GA estimates its gradients on the first ones
    if args.packing:  # a pack takes the place of a row from here on: the loop, the order, the reference pass
        train_rows = pack_rows(train_rows, args.packing_length or args.max_length, args.packing_strategy)
    resolved = {**args.to_dict(), "model": model_path, "algorithm": algorithm_name, "dtype": precision,
                "train_rows": encoded_rows, "train_packs": len(train_rows) if args.packing else None,
                "train_data_sha256": data_fingerprint(train_rows),
                # The data order follows the global batch (per-device batch × processes): resume with the same.
                "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    classifier = algorithm.rows == "classification" or getattr(algorithm, "model_class", "") == "sequence_classifier"
    if isinstance(algorithm, GenerativeReranker):  # its score reads the head's "yes" and "no" rows
        try:
            yes_id, no_id = yes_no_token_ids(tokenizer)
        except ValueError as error:
            raise AlignkitError(str(error)) from error
        algorithm = dataclasses.replace(algorithm, yes_id=yes_id, no_id=no_id)
    if classifier:
        model = load_sequence_classifier(model_path, args.model_revision, weights_dtype(args),
                                         num_labels=algorithm.num_labels, problem_type=algorithm.problem_type,
                                         pad_token_id=tokenizer.pad_token_id, device_map=device_map,
                                         max_memory=max_memory, options=load_options(args))
    else:
        model = load_causal_lm(model_path, args.model_revision, weights_dtype(args), device_map=device_map,
                               max_memory=max_memory, options=load_options(args))
    fit_embeddings(model, tokenizer)
    check_trainable(model)
    prepare_loaded(model, args)
    collate = make_collate(algorithm, tokenizer.pad_token_id)
    if args.train_type == "longlora":  # ms-swift's padding_to: LongLoRA's groups are a quarter of --max_length
        collate = PaddedTo(collate, args.max_length, tokenizer.pad_token_id)

    # Speed-ups (docs/performance.md): the forward layout of every algorithm, and the reference's
    # log-probs precomputed before any adapter is attached (the starting weights, also on resume).
    # classification, embedding, reranker: pooled at a row's last non-padding token of padded batches; the
    # generative reranker (which has a layout) reads each packed conversation at its own last token.
    if algorithm.rows in ("classification", "embedding", "ranking") and not hasattr(algorithm, "layout"):
        layout, reasons = Layout(), {name: f"{algorithm.rows} rows run padded batches" for name in PACKING_SPEEDUPS}
    else:
        layout, reasons = choose_layout(args, algorithm_name, model, precision)
    # With LoRA the adapter-disabled policy is the reference; full fine-tuning needs a frozen copy of the
    # starting weights, or the user's --ref_model; --precompute_ref_log_probs keeps neither.
    precompute = algorithm.needs_reference and args.precompute_ref_log_probs
    processes = process_state()
    # A sequence-parallel group (consecutive ranks) trains on the same rows: the data is split between groups.
    data_processes = processes.num_processes // args.sequence_parallel_size
    data_rank = processes.process_index // args.sequence_parallel_size
    config = loop_config_for(args, start)
    settings = tuner_settings(args, total_steps=total_steps(batches_per_epoch(
        len(train_rows), args.per_device_train_batch_size * data_processes, drop_last=config.drop_last),
        config), task_type="SEQ_CLS" if classifier else "CAUSAL_LM")
    check_live_reference(args, settings, live_adapter_reference=algorithm.needs_reference and not precompute
                         and is_adapter(args) and not args.ref_model)
    parts = {"layout": layout} if hasattr(algorithm, "layout") else {}
    if not algorithm.needs_reference:
        reasons["precomputed reference log-probs"] = (
            "--reference_free" if args.reference_free else f"{algorithm_name} has no reference model")
    else:
        parts["reference"] = make_reference(
            model, ref_model=args.ref_model, full=not is_adapter(args), precompute=precompute,
            batches=reference_batches(train_rows, val_rows, loop_config(args, precision),
                                      kl_pairs=algorithm.rows == "unpaired" and algorithm.needs_kl,
                                      world_size=data_processes, rank=data_rank)
            if precompute else [],
            collate=collate, layout=layout, template=template.source, max_length=args.max_length,
            precision=precision, device=processes.device, ld_alpha=getattr(algorithm, "ld_alpha", None),
            load_dtype=weights_dtype(args),
        )
    algorithm = dataclasses.replace(algorithm, **parts)
    log_speedups(layout, precompute=precompute, precision=precision,
                 gradient_checkpointing=args.gradient_checkpointing, reasons=reasons)
    # seq_cls: peft trains and saves the classification head in full (task_type SEQ_CLS), as ms-swift.
    model = make_trainable(model, args, settings=settings, targets=text_targets(args),
                           gradient_rows=(unpacked_rows, tokenizer.pad_token_id)
                           if algorithm_name == "sft" and not classifier else None)
    if algorithm_name == "gkd":  # the frozen teacher, and the student it samples from (training/gkd_setup.py)
        from alignkit.training.gkd_setup import with_models

        algorithm = with_models(algorithm, args, model, encoder)
    if algorithm.scalar_head:
        # The scalar head is trained in full, LoRA or not.
        hidden = model.get_input_embeddings().embedding_dim
        model = SequenceRewardModel(model, VALUE_HEADS[args.value_head_init](hidden))
    if defaults["disable_dropout"]:
        logger.info("Dropout off (--disable_dropout): %d dropout modules set to p=0", disable_dropout(model))
    trainable, total = count_parameters(model)
    logger.info("Model %s: %s training, %d of %d parameters trainable (%.2f%%)", model_path, args.train_type,
                trainable, total, 100 * trainable / total)
    config, terms = loop_additions(config, args, model, vision=False)
    generated = (GeneratedEvaluation(held_out_prompts(encoder, val_data), encoder, args.max_new_tokens,
                                     args.per_device_eval_batch_size)
                 if args.predict_with_generate and algorithm_name == "sft" and val_rows else None)
    return train(
        model=model,
        tokenizer=tokenizer,
        algorithm=WithModelLosses(algorithm, tuple(terms)) if terms else algorithm,
        train_rows=train_rows,
        val_rows=val_rows,
        collate=collate,
        config=config,
        run_dir=open_run_dir(args, resolved, resume),
        args_for_checkpoint=resolved,
        row_sources=[row.source for row in train_data],
        held_out_evaluation=generated,
    )


def make_collate(algorithm, pad_id: int):
    """The collator of the algorithm's rows: conversations, pairs, unpaired rows (also KTO's mismatched KL rows,
    which the loop forms per step) or labelled conversations (seq_cls)."""
    if algorithm.rows == "sft":
        return SequenceCollator(pad_id)
    if algorithm.rows in ("embedding", "ranking"):
        return GroupCollator(pad_id, sample=algorithm.rows == "ranking")
    if algorithm.rows == "classification":
        return ClassificationCollator(pad_id, problem_type=algorithm.problem_type, num_labels=algorithm.num_labels)
    if algorithm.rows == "unpaired":
        return UnpairedCollator(pad_id)
    return PairCollator(pad_id)



def build_algorithm(args: RunArguments, name: str, defaults: dict):
    """The algorithm object for ``name`` ("sft" or an --rlhf_type), with the method's defaults (``defaults``:
    ``config.defaults.resolve``) and every flag combination checked by the loss functions."""
    if name == "sft":
        if args.enable_dft_loss and defaults["task_type"] not in (None, "causal_lm"):
            raise AlignkitError(f"--enable_dft_loss weighs a generated token's cross-entropy by its probability; "
                                f"--task_type {defaults['task_type']} generates no tokens (as in ms-swift, it is for "
                                "causal_lm)")
        if defaults["task_type"] == "seq_cls":
            return SequenceClassification(num_labels=defaults["num_labels"], problem_type=defaults["problem_type"])
        if defaults["task_type"] == "embedding":
            return Embedding(loss_type=defaults["loss_type"][0])
        if defaults["task_type"] == "reranker":
            return Reranker(loss_type=defaults["loss_type"][0])
        if defaults["task_type"] == "generative_reranker":  # the yes/no token ids are set once the tokenizer is
            return GenerativeReranker(loss_type=defaults["loss_type"][0], yes_id=-1, no_id=-1)
        return SFT(enable_dft_loss=args.enable_dft_loss)
    if name in ("simpo", "orpo") and args.loss_type:
        raise AlignkitError(f"--rlhf_type {name} has a single loss and takes no --loss_type "
                            f"(got {' '.join(args.loss_type)})")
    loss_types, beta = defaults["loss_type"], defaults["beta"]
    if name != "dpo" and len(loss_types) > 1:
        raise AlignkitError(f"--rlhf_type {name} takes one --loss_type, got {' '.join(loss_types)}; "
                            "several are mixed by --rlhf_type dpo only")
    if args.loss_weights and name != "dpo":
        raise AlignkitError("--loss_weights mixes --rlhf_type dpo loss types; it has no effect here")
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
        if name == "gkd":
            from alignkit.training.gkd_setup import gkd_algorithm

            return gkd_algorithm(args, beta)
        if name == "rm":
            return RewardModeling(loss_type=loss_types[0], center_rewards_coefficient=args.center_rewards_coefficient)
    except ValueError as error:
        raise AlignkitError(f"--rlhf_type {name}: {error}") from error
    raise AlignkitError(f"unknown --rlhf_type {name}")





def reference_batches(train_rows: list, val_rows: list, config: LoopConfig, *, kl_pairs: bool = False,
                      world_size: int = 1, rank: int = 0) -> list[list]:
    """The micro-batches this process's loop and evaluation will form, for the one-off reference pass: its
    shard of the training batches (each row once) and, on the main process, which evaluates alone, the
    held-out batches. With KTO's ``kl_pairs`` also every step's mismatched KL rows, in the micro-batches the
    loop runs them (``kl_micro_batches``), and the held-out set's."""
    lengths = tuple(encoded_length(row) for row in train_rows) if config.group_by_length else None
    visited = visited_batches(len(train_rows), config, world_size=world_size, rank=rank, lengths=lengths)
    train = [[train_rows[i] for i in batch] for batch in visited]
    size = config.eval_batch_size
    held_out = [val_rows[i : i + size] for i in range(0, len(val_rows), size)] if rank == 0 else []
    if kl_pairs:
        for group in visited_steps(len(train_rows), config, world_size=world_size, lengths=lengths):
            micro_batches = kl_micro_batches(group, train_rows, rank=rank, batch_size=config.batch_size)
            train += [items for items, _ in micro_batches]
        mismatched = kl_rows(val_rows) if rank == 0 and val_rows else []
        held_out += [mismatched[i : i + size] for i in range(0, len(mismatched), size)]
    return train + held_out
