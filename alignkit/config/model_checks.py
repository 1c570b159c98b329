"""Checks on the flags that decide how the model loads and what trains (precision, quantisation, peft's tuners,
attention, RoPE): a value alignkit cannot honour stops the run before anything loads, naming the flag and what
to use instead; a tuner's flag set for another tuner says once that it has no effect."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# ms-swift's tuners alignkit does not have, and what to use instead.
REFUSED_TUNERS = {
    "reft": "ReFT is not supported; use --tuner_type lora",
}
# The tuners that attach no adapter: what trains, and the checkpoint is the whole model.
WHOLE_MODEL_TUNERS = {"full": "every weight trains", "llamapro": "only the new blocks train",
                      "dummy": "the model trains as loaded"}
ADAPTER_TUNERS = ("lora", "adalora", "vera", "boft", "fourierft", "bone", "lora_llm", "adapter", "longlora")
LORA_LIKE = ("lora", "lora_llm", "longlora", "adalora")  # LoRA's own options apply (peft's LoraConfig or its subclass)
LORA_INITS = re.compile(r"^(true|false|gaussian|pissa|pissa_niter_\d+|olora|loftq|orthogonal|lora-ga)$")
BONE_INITS = ("true", "false", "bat")
# A tuner's own flags (by name prefix) and the tuner they serve.
TUNER_FLAG_PREFIXES = {"adalora_": "adalora", "vera_": "vera", "boft_": "boft", "fourier_": "fourierft",
                       "llamapro_": "llamapro", "adapter_": "adapter"}


def short_dtype(name: str | None) -> str | None:
    """'bfloat16' -> 'bf16' (None and 'auto' stay as they are)."""
    return SHORT_DTYPE.get(name, name) if name else name


def check_model_flags(args: RunArguments) -> None:
    _check_precision(args)
    _check_tuner(args)
    _check_quantisation(args)
    _check_loading(args)
    _log_tuner_flags_without_effect(args)


def _check_precision(args: RunArguments) -> None:
    weights = short_dtype(args.torch_dtype)
    compute = short_dtype(args.dtype)
    if weights not in (None, "auto") and compute != "auto" and compute != weights:
        raise AlignkitError(f"--torch_dtype {args.torch_dtype} with --dtype {args.dtype}: --torch_dtype sets the "
                            "compute precision too; pass one of them")


def _check_tuner(args: RunArguments) -> None:
    tuner = args.train_type
    if args.tuner_backend == "unsloth":
        raise AlignkitError("--tuner_backend unsloth: Unsloth's patched models and kernels are not supported; "
                            "adapters run on peft (--tuner_backend peft); for faster kernels see --use_liger_kernel")
    if tuner in REFUSED_TUNERS:
        raise AlignkitError(f"--tuner_type {tuner}: {REFUSED_TUNERS[tuner]}")
    _check_layer_tuners(args)
    if tuner == "adalora" and args.resume_from_checkpoint:
        raise AlignkitError("--resume_from_checkpoint with --tuner_type adalora: an AdaLoRA checkpoint keeps only the "
                            "ranks its budget left and not its importance scores, so the run cannot continue "
                            "exactly; continue from its adapter in a new run with --adapters CHECKPOINT")
    if tuner == "adalora" and args.rlhf_type in ("ppo", "grpo"):
        raise AlignkitError(f"--tuner_type adalora with --rlhf_type {args.rlhf_type}: AdaLoRA's rank budget follows "
                            "one optimizer step per loop step, and the online methods take several; use lora")
    init = args.init_weights.lower()
    if init == "lora-ga":
        _check_lora_ga(args)
    if tuner == "adapter":
        _check_bottleneck_adapter(args)
    if tuner == "bone" and init not in BONE_INITS:
        raise AlignkitError(f"--init_weights {args.init_weights} with --tuner_type bone: expected true, false or bat")
    if tuner in LORA_LIKE and not LORA_INITS.match(init):
        raise AlignkitError(f"--init_weights {args.init_weights}: expected true, false, gaussian, pissa, "
                            "pissa_niter_N, olora, loftq or orthogonal (peft's data-driven eva and corda are not "
                            "supported)")
    if init == "loftq":
        import torch

        if not torch.cuda.is_available():  # peft's LoftQ quantises on a CUDA (or XPU) device only
            raise AlignkitError("--init_weights loftq: peft computes LoftQ's initialisation on a CUDA GPU, and this "
                                "machine has none; use --init_weights pissa or olora")
    if init.startswith("pissa_niter_"):
        # peft draws the randomised SVD again when it loads the adapter, onto base weights it rewrites again.
        raise AlignkitError(f"--init_weights {args.init_weights}: its randomised SVD is drawn again whenever the "
                            "adapter is loaded, so a checkpoint would not load back to the trained model; use "
                            "--init_weights pissa (the exact SVD)")
    if tuner not in LORA_LIKE + ("bone",) and init != "true":
        raise AlignkitError(f"--init_weights {args.init_weights} does not apply to --tuner_type {tuner}")
    for flag in ("use_dora", "use_rslora"):
        if getattr(args, flag) and tuner not in ("lora", "lora_llm", "longlora"):
            raise AlignkitError(f"--{flag} is an option of LoRA; it does not apply to --tuner_type {tuner}")
    if args.lorap_lr_ratio is not None:
        if tuner not in ("lora", "lora_llm", "longlora"):
            raise AlignkitError(f"--lorap_lr_ratio (LoRA+) applies to --tuner_type lora, not {tuner}")
        if not args.lorap_lr_ratio > 0:
            raise AlignkitError(f"--lorap_lr_ratio {args.lorap_lr_ratio}: expected a positive ratio")
    if args.reft_rank != 4 and tuner != "bone":
        raise AlignkitError(f"--reft_rank {args.reft_rank}: ReFT is not supported; the flag only sets --tuner_type "
                            "bone's rank (as in ms-swift)")
    if tuner in WHOLE_MODEL_TUNERS:
        for flag in ("modules_to_save", "target_regex", "lora_dtype"):
            if getattr(args, flag):
                logger.info("--%s has no effect with --tuner_type %s: %s", flag, tuner, WHOLE_MODEL_TUNERS[tuner])
    for name in ("vera_rank", "boft_n_butterfly_factor", "fourier_n_frequency", "adalora_target_r", "adalora_init_r",
                 "reft_rank"):
        if getattr(args, name) < 1:
            raise AlignkitError(f"--{name} {getattr(args, name)}: expected a positive integer")
    if args.boft_block_size < 0 or args.boft_block_num < 0 or (args.boft_block_size == 0) == (args.boft_block_num == 0):
        raise AlignkitError(f"--boft_block_size {args.boft_block_size} --boft_block_num {args.boft_block_num}: set "
                            "exactly one of them (the other 0)")
    if args.adalora_orth_reg_weight < 0:
        raise AlignkitError(f"--adalora_orth_reg_weight {args.adalora_orth_reg_weight}: expected 0 or more")


def _check_lora_ga(args: RunArguments) -> None:
    """What LoRA-GA (alignkit/models/lora_ga.py) is built for: a new plain LoRA on unquantised weights."""
    from alignkit.config.online_checks import _zero3

    if args.train_type not in ("lora", "lora_llm", "longlora"):
        raise AlignkitError(f"--init_weights lora-ga initialises LoRA; it does not apply to --tuner_type "
                            f"{args.train_type}")
    for flag, why in (("use_dora", "DoRA's magnitude vector"), ("adapters", "an adapter that is loaded, not new"),
                      ("quant_method", "quantised weights (the gradient needs the weights in full precision)")):
        if getattr(args, flag):
            raise AlignkitError(f"--init_weights lora-ga with --{flag}: LoRA-GA has no start for {why}")
    if _zero3(args.deepspeed) or str(args.fsdp).lower() not in ("false", "none", ""):
        raise AlignkitError("--init_weights lora-ga with ZeRO-3 or FSDP: its converted checkpoint is written from "
                            "the whole adapter, which sharded engines hold in pieces; use --deepspeed zero2 or DDP")
    for flag in ("lora_ga_batch_size", "lora_ga_iters", "lora_ga_max_length"):
        if getattr(args, flag) < 1:
            raise AlignkitError(f"--{flag} {getattr(args, flag)}: expected a positive integer")
    if not args.lora_ga_stable_gamma > 0:
        raise AlignkitError(f"--lora_ga_stable_gamma {args.lora_ga_stable_gamma}: expected a positive number")


def _check_bottleneck_adapter(args: RunArguments) -> None:
    """ms-swift's Adapter (alignkit/models/bottleneck_adapter.py): its checkpoint is written from the whole adapters."""
    from alignkit.config.online_checks import _zero3

    if _zero3(args.deepspeed) or str(args.fsdp).lower() not in ("false", "none", ""):
        raise AlignkitError("--tuner_type adapter with ZeRO-3 or FSDP: its checkpoint is written from the whole "
                            "adapters, which sharded engines hold in pieces; use --deepspeed zero2 or DDP")
    if args.adapter_length < 1:
        raise AlignkitError(f"--adapter_length {args.adapter_length}: expected a positive integer")
    for flag in ("modules_to_save", "target_regex"):
        if getattr(args, flag):
            raise AlignkitError(f"--{flag} with --tuner_type adapter: ms-swift's adapter goes after every decoder "
                                "MLP and trains nothing else; use --tuner_type lora for this")


def _check_layer_tuners(args: RunArguments) -> None:
    """LISA changes which decoder layers train as the run goes, LLaMA-Pro how many layers there are: both need whole,
    unsharded weights (one process or DDP), and LLaMA-Pro a model only the trainer runs (not vLLM)."""
    if args.lisa_activated_layers < 0 or args.lisa_step_interval < 1:
        raise AlignkitError(f"--lisa_activated_layers {args.lisa_activated_layers} --lisa_step_interval "
                            f"{args.lisa_step_interval}: expected 0 or more layers (0: off) and an interval of 1 or "
                            "more steps")
    for name, on in (("--lisa_activated_layers", args.lisa_activated_layers > 0),
                     ("--tuner_type llamapro", args.train_type == "llamapro")):
        if not on:
            continue
        if name.startswith("--lisa") and args.train_type != "full":
            raise AlignkitError(f"--lisa_activated_layers with --tuner_type {args.train_type}: LISA is a way of full "
                                "fine-tuning; use --tuner_type full")
        engines = {"--deepspeed": args.deepspeed not in (None, "", "false"),
                   "--fsdp": args.fsdp not in (False, None, "", "false"), "--plugin": args.plugin not in (None, "ddp")}
        engine = next((flag for flag, used in engines.items() if used), None)
        if engine is not None:
            why = ("LISA changes which layers train as the run goes, while the engine fixes the trained parameters "
                   "(and their flat buffers) at setup" if name.startswith("--lisa") else
                   "LLaMA-Pro copies whole decoder layers of the loaded model, which the engine may already have "
                   "partitioned")
            raise AlignkitError(f"{name} with {engine}: {why}; run with data parallelism (NPROC_PER_NODE) or one "
                                "process")
        if name == "--tuner_type llamapro" and args.use_vllm:
            raise AlignkitError("--tuner_type llamapro with --use_vllm: vLLM would load the model without the new "
                                "blocks; sample with transformers (--use_vllm false)")
        if args.quant_method is not None:
            raise AlignkitError(f"{name} with --quant_method: quantised weights cannot be trained; use LoRA (QLoRA)")
    if args.lisa_activated_layers > 0 and args.ddp_find_unused_parameters is False:
        raise AlignkitError("--lisa_activated_layers with --ddp_find_unused_parameters false: the frozen layers "
                            "get no gradients, which DDP must be told to expect")


def _check_quantisation(args: RunArguments) -> None:
    method, bits = args.quant_method, args.quant_bits
    if method is None:
        if bits is not None:
            logger.info("--quant_bits %s without --quant_method: the model loads unquantised (as in ms-swift); "
                        "pass --quant_method bnb for QLoRA", bits)
        return
    if method not in ("bnb", "hqq"):
        raise AlignkitError(f"--quant_method {method} is not supported for training; use --quant_method bnb "
                            "--quant_bits 4|8 (bitsandbytes) or --quant_method hqq --quant_bits 1-8 (CPU or GPU)")
    if method == "bnb" and bits not in (4, 8):
        raise AlignkitError(f"--quant_method bnb --quant_bits {bits}: bitsandbytes quantises to 4 or 8 bits")
    if method == "hqq" and bits not in (1, 2, 3, 4, 8):
        raise AlignkitError(f"--quant_method hqq --quant_bits {bits}: HQQ quantises to 1, 2, 3, 4 or 8 bits")
    if args.train_type == "full":
        raise AlignkitError(f"--quant_method {method} with --tuner_type full: quantised weights cannot be trained; "
                            "train an adapter on them (QLoRA: --tuner_type lora)")
    if args.lora_dtype is not None:
        raise AlignkitError("--lora_dtype with --quant_method: a quantised model's adapter trains in fp32")


def _check_loading(args: RunArguments) -> None:
    if args.max_model_len is not None and args.max_model_len < 1:
        raise AlignkitError(f"--max_model_len {args.max_model_len}: expected a positive integer")
    if not args.router_aux_loss_coef >= 0:
        raise AlignkitError(f"--router_aux_loss_coef {args.router_aux_loss_coef}: expected 0 or more")
    for flag in ("vit_lr", "aligner_lr"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise AlignkitError(f"--{flag} {value}: expected a positive learning rate")
    parse_json_object(args.gradient_checkpointing_kwargs, "--gradient_checkpointing_kwargs")
    parse_rope_scaling(args.rope_scaling)


def parse_json_object(text: str | None, flag: str) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise AlignkitError(f"{flag} {text}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise AlignkitError(f"{flag} {text}: expected a JSON object")
    return value


def parse_rope_scaling(text: str | None) -> dict | None:
    """--rope_scaling as a dict: 'yarn' -> {'rope_type': 'yarn'}; a JSON object as given ('type' read as
    'rope_type')."""
    if text is None:
        return None
    if text.strip().startswith("{"):
        value = parse_json_object(text, "--rope_scaling")
        if "rope_type" not in value and "type" not in value:
            raise AlignkitError(f"--rope_scaling {text}: the object needs a rope_type")
        value.setdefault("rope_type", value.pop("type", None))
        return value
    if text not in ("linear", "dynamic", "yarn"):
        raise AlignkitError(f"--rope_scaling {text}: expected linear, dynamic, yarn or a JSON object")
    return {"rope_type": text}


def _log_tuner_flags_without_effect(args: RunArguments) -> None:
    """A tuner's own flag set for another tuner (ms-swift ignores it silently) is said once."""
    for f in dataclasses.fields(RunArguments):
        serves = next((tuner for prefix, tuner in TUNER_FLAG_PREFIXES.items() if f.name.startswith(prefix)), None)
        if serves is None or serves == args.train_type or getattr(args, f.name) == f.default:
            continue
        logger.warning("--%s has no effect with --tuner_type %s (it serves %s)", f.name, args.train_type, serves)
    bnb4 = args.quant_method == "bnb" and args.quant_bits == 4
    for name in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
        if getattr(args, name) is not None and not bnb4:
            logger.warning("--%s has no effect without --quant_method bnb --quant_bits 4", name)
    if args.hqq_axis is not None and args.quant_method != "hqq":
        logger.warning("--hqq_axis has no effect without --quant_method hqq")
