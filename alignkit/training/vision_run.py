"""The vision-language branch of ``run_training``: the processor encodes rows with images, the model loads
through transformers' image-text-to-text classes, and the freeze flags and LoRA targets follow ms-swift's
vit / aligner / llm split. Algorithms and the loop are the text path's: the pixel inputs ride in
``Batch.model_inputs``, which ``forward_logps`` and the reward model pass to every forward."""

from __future__ import annotations

import copy
import dataclasses
import logging

from alignkit.algorithms.kto import check_kto_rows
from alignkit.config.run import RunArguments
from alignkit.data.encode import with_row_fields
from alignkit.data.order import batches_per_epoch, total_steps
from alignkit.errors import AlignkitError
from alignkit.models.load import count_parameters, disable_dropout
from alignkit.models.reference import Reference
from alignkit.models.reward_model import VALUE_HEADS, SequenceRewardModel
from alignkit.training.distributed import process_state
from alignkit.training.loop_config import loop_config
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
    tuner_settings,
    weights_dtype,
)
from alignkit.training.resume import data_fingerprint
from alignkit.training.runner import RunStart, loop_config_for, open_run_dir, rows_per_step
from alignkit.vision.collate import VisionPairCollator, VisionUnpairedCollator
from alignkit.vision.encode import VisionEncoder, encode_vision_rows, image_token_id
from alignkit.vision.model import (
    freeze,
    frozen_parts,
    load_processor,
    load_vision_model,
    outermost_part_modules,
    vision_lora_targets,
)
from alignkit.vision.shared_images import enable_shared_images

logger = logging.getLogger("alignkit")


def build_vision_training(args: RunArguments, algorithm, model_path: str, train_data: list, val_data: list, *,
                          dropout_off: bool = False):
    """(model, processor, encoded training rows, encoded held-out rows, collate, algorithm with its reference)
    for a vision-language model."""
    if algorithm.rows in ("sft", "classification"):
        what = "sft --task_type seq_cls" if algorithm.rows == "classification" else "sft"
        raise AlignkitError(f"{model_path} is a vision-language model; alignkit trains those with the preference "
                            f"methods (alignkit rlhf --rlhf_type dpo|cpo|simpo|orpo|kto|rm), not {what}")
    if args.sequence_parallel_size > 1:
        raise AlignkitError(f"--sequence_parallel_size {args.sequence_parallel_size}: {model_path} is a "
                            "vision-language model; alignkit splits the sequences of text models only")
    for on, flag in ((args.train_type == "llamapro", "--tuner_type llamapro"),
                     (args.lisa_activated_layers > 0, "--lisa_activated_layers")):
        if on:  # both work on the first list of layers, which in a vision-language model may be the encoder's
            raise AlignkitError(f"{flag}: text models only; {model_path} is a vision-language model")
    processor = load_processor(model_path, args.model_revision)
    add_special_tokens(args, processor.tokenizer)
    model = load_vision_model(model_path, args.model_revision, weights_dtype(args),
                              options=load_options(args, vision=True))
    fit_embeddings(model, processor.tokenizer)
    encoder = VisionEncoder(processor, image_token_id(processor, model.config), max_length=args.max_length,
                            max_prompt_length=args.max_prompt_length, truncation_strategy=args.truncation_strategy,
                            system=args.system, max_pixels=args.max_pixels)
    train_rows, dropped = encode_vision_rows(encoder, train_data)
    val_rows, val_dropped = encode_vision_rows(encoder, val_data)
    if dropped or val_dropped:
        logger.warning("Dropped %d training and %d held-out rows with images over --max_length %d", dropped,
                       val_dropped, args.max_length)
    if not train_rows:
        raise AlignkitError(f"no training rows are left: all {len(train_data)} rows are longer than --max_length "
                            f"{args.max_length} (rows with images are never truncated); raise it")
    train_rows, val_rows = with_row_fields(train_rows, train_data), with_row_fields(val_rows, val_data)
    if algorithm.rows == "unpaired":
        train_rows, val_rows = check_kto_rows(algorithm, train_rows, val_rows, rows_per_step(args))

    prepare_loaded(model, args, vision=True)
    config = loop_config(args, "fp32")
    settings = tuner_settings(args, total_steps=total_steps(batches_per_epoch(
        len(train_rows), args.per_device_train_batch_size * process_state().num_processes,
        drop_last=config.drop_last), config))
    # The reference is live here (no precomputed log-probs for pixels): the adapter-disabled policy with an adapter.
    check_live_reference(args, settings, live_adapter_reference=algorithm.needs_reference and is_adapter(args)
                         and not args.ref_model)
    if algorithm.needs_reference and (not is_adapter(args) or args.ref_model):
        reference = (load_vision_model(args.ref_model, None, weights_dtype(args)) if args.ref_model
                     else copy.deepcopy(model))
        enable_shared_images(reference)
        algorithm = dataclasses.replace(algorithm, reference=Reference(reference))
    share_images = enable_shared_images(model)  # before peft wraps it; see alignkit/vision/shared_images.py
    frozen = frozen_parts(freeze_vit=args.freeze_vit, freeze_aligner=args.freeze_aligner, freeze_llm=args.freeze_llm)
    if not is_adapter(args):
        if args.train_type == "dummy":  # as ms-swift: the model as loaded, no --freeze_* applied
            frozen = set()
        freeze(model, frozen)
        model = make_trainable(model, args, settings=None, targets=None)
    elif args.train_type == "lora_llm":
        # ms-swift's lora_llm: LoRA on the language model, the vision encoder and aligner trained in full (here as
        # peft's modules_to_save, so the adapter-disabled model keeps their starting weights for the reference).
        targets = (args.target_regex if args.target_regex
                   else vision_lora_targets(model, args.lora_target_modules, {"vit", "aligner"}))
        saved = list(args.modules_to_save) + outermost_part_modules(model, {"vit", "aligner"})
        logger.info("--tuner_type lora_llm: LoRA on the language model; %s trained in full", ", ".join(saved))
        model = make_trainable(model, args, settings=settings, targets=targets, modules_to_save=saved)
    else:
        targets = args.target_regex if args.target_regex else vision_lora_targets(model, args.lora_target_modules,
                                                                                  frozen)
        model = make_trainable(model, args, settings=settings, targets=targets)
    if algorithm.scalar_head:
        hidden = model.get_input_embeddings().embedding_dim
        model = SequenceRewardModel(model, VALUE_HEADS[args.value_head_init](hidden))
    if dropout_off:
        logger.info("Dropout off (--disable_dropout): %d dropout modules set to p=0", disable_dropout(model))
    trainable, total = count_parameters(model)
    logger.info("Vision-language model %s: %s training (frozen: %s), %d of %d parameters trainable (%.2f%%)",
                model_path, args.train_type, ", ".join(sorted(frozen)) or "nothing", trainable, total,
                100 * trainable / total)
    return model, processor, train_rows, val_rows, _collate(algorithm, processor, share_images), algorithm


def _collate(algorithm, processor, share_images: bool):
    pad_id = processor.tokenizer.pad_token_id
    if algorithm.rows == "unpaired":
        collate = VisionUnpairedCollator(pad_id)
    else:
        collate = VisionPairCollator(pad_id, share_images=share_images)
    return collate


def run_vision_training(args: RunArguments, algorithm, algorithm_name: str, model_path: str, train_data: list,
                        val_data: list, start: RunStart, *, dropout_off: bool = False):
    """The tail of ``run_training`` for a vision-language model. Returns the last checkpoint."""
    from alignkit.models.packing import Layout
    from alignkit.training.loop import train
    from alignkit.training.speedups import log_speedups

    model, processor, train_rows, val_rows, collate, algorithm = build_vision_training(
        args, algorithm, model_path, train_data, val_data, dropout_off=dropout_off
    )
    resolved = {**args.to_dict(), "model": model_path, "algorithm": algorithm_name,
                "dtype": start.precision, "train_rows": len(train_rows),
                "train_data_sha256": data_fingerprint(train_rows), "vision": True}
    run_dir = open_run_dir(args, resolved, start.resume)
    log_speedups(
        Layout(),
        precompute=False,
        precision=start.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        reasons={
            "padding-free packing": "rows with images run padded",
            "prompt-prefix sharing": "rows with images run padded",
            "precomputed reference log-probs": "the cache is keyed by tokens, not pixels",
        },
    )
    config, terms = loop_additions(loop_config_for(args, start), args, model, vision=True)
    return train(
        model=model, tokenizer=processor, algorithm=WithModelLosses(algorithm, tuple(terms)) if terms else algorithm,
        train_rows=train_rows, val_rows=val_rows, collate=collate,
        config=config,
        run_dir=run_dir, args_for_checkpoint=resolved, row_sources=[row.source for row in train_data],
    )
