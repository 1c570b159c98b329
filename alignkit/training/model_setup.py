"""A training run's model, from its flags: how it loads (``--torch_dtype``, ``--attn_impl``, QLoRA's
``--quant_method``, RoPE and context length, mixture-of-experts settings, ``--new_special_tokens``), gradient
checkpointing, what trains (``--tuner_type`` and peft's options, or full fine-tuning, in fp32), and what the loop
adds for it: per-parameter learning rates (LoRA+, ``--vit_lr``, ``--aligner_lr``), AdaLoRA's budget allocation
after each optimizer step, and loss terms the model provides (AdaLoRA's orthogonality penalty, a mixture-of-experts
router's load-balancing loss). The text, vision-language and online runs all build their trained model here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from alignkit.config.model_checks import WHOLE_MODEL_TUNERS, parse_json_object, parse_rope_scaling, short_dtype
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError
from alignkit.models import lora_ga, shifted_sparse_attention
from alignkit.models.liger import apply_liger_kernels
from alignkit.models.llama_pro import expand_blocks
from alignkit.models.load import count_parameters, load_adapters, lora_targets
from alignkit.models.load_options import LoadOptions
from alignkit.models.lora_ga import LoraGaSettings
from alignkit.models.quantization import (
    DTYPES,
    bnb_config,
    hqq_linear_names,
    is_quantized,
    prepare_quantized_for_training,
    quantize_hqq,
)
from alignkit.models.tuners import (
    TunerSettings,
    adalora_model,
    adalora_orthogonal_penalty,
    attach_tuner,
    hold_trainable_in_fp32,
    lora_plus_learning_rate,
)
from alignkit.vision.model import ALIGNER_NAMES, VIT_NAMES, part_of

logger = logging.getLogger("alignkit")

CLASSIFIER_HEADS = ("score", "classifier")  # transformers' sequence-classification heads
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(args: RunArguments) -> torch.dtype:
    """The precision the weights load in: --torch_dtype's, else fp32 (--dtype only sets autocast)."""
    return WEIGHT_DTYPES.get(short_dtype(args.torch_dtype), torch.float32)


def is_adapter(args: RunArguments) -> bool:
    """A peft adapter on frozen weights (full, llamapro and dummy train the model's own weights)."""
    return args.train_type not in WHOLE_MODEL_TUNERS


def load_options(args: RunArguments, *, vision: bool = False) -> LoadOptions:
    quantization = None
    if args.quant_method == "bnb":
        compute = args.bnb_4bit_compute_dtype
        # ms-swift's default: the matmuls in bf16 when the weights are, else fp32.
        compute_dtype = DTYPES[compute] if compute else (torch.bfloat16 if weights_dtype(args) == torch.bfloat16
                                                         else torch.float32)
        # A vision-language model's vision encoder and aligner stay unquantised (as in ms-swift), and the LM head.
        skip = [*VIT_NAMES, *ALIGNER_NAMES, "lm_head"] if vision else None
        quantization = bnb_config(args.quant_bits, compute_dtype=compute_dtype, quant_type=args.bnb_4bit_quant_type,
                                  double_quant=args.bnb_4bit_use_double_quant,
                                  quant_storage=args.bnb_4bit_quant_storage, skip_modules=skip)
    return LoadOptions(attn_implementation=args.attn_impl, quantization=quantization,
                       experts_implementation=args.experts_impl, router_aux_loss_coef=args.router_aux_loss_coef,
                       rope_scaling=parse_rope_scaling(args.rope_scaling), max_model_len=args.max_model_len)


# ------------------------------------------------------------------------------------------- tokens


def new_special_tokens(args: RunArguments) -> list[str]:
    """--new_special_tokens: tokens, or .txt files holding whitespace-separated tokens (ms-swift's form)."""
    tokens: list[str] = []
    for item in args.new_special_tokens:
        if item.endswith(".txt"):
            path = Path(item)
            if not path.is_file():
                raise AlignkitError(f"--new_special_tokens {item}: no such file")
            tokens += path.read_text(encoding="utf-8").split()
        else:
            tokens.append(item)
    return tokens


def add_special_tokens(args: RunArguments, tokenizer) -> int:
    """Add --new_special_tokens to the tokenizer before the data is encoded; returns how many were new."""
    tokens = new_special_tokens(args)
    if not tokens:
        return 0
    if args.train_type == "llamapro":
        raise AlignkitError("--new_special_tokens with --tuner_type llamapro: only the new blocks train, so the new "
                            "tokens' embeddings would stay random; use --tuner_type full, or lora with "
                            "--modules_to_save embed_tokens lm_head")
    if is_adapter(args) and not any(name in ("embed_tokens", "all-embedding") for name in args.modules_to_save):
        raise AlignkitError(
            f"--new_special_tokens with --tuner_type {args.train_type}: the new tokens' embeddings must train and be "
            "saved with the adapter; add --modules_to_save embed_tokens lm_head (as ms-swift's example does)")
    added = tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    logger.info("--new_special_tokens: %d of %d tokens added to the tokenizer (%d tokens)", added, len(tokens),
                len(tokenizer))
    return added


def fit_embeddings(model, tokenizer) -> None:
    """Grow the embeddings to hold every token of ``tokenizer``, to a multiple of 128 (as ms-swift)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        size = math.ceil(len(tokenizer) / 128) * 128
        model.resize_token_embeddings(size)
        logger.info("Embeddings resized from %d to %d rows for the new tokens", vocab, size)


# ------------------------------------------------------------------------------------------- before adapters


def prepare_loaded(model, args: RunArguments, *, vision: bool = False) -> None:
    """After loading, before the reference and the adapter: Liger's kernels, QLoRA's preparation and gradient
    checkpointing."""
    if args.use_liger_kernel:
        apply_liger_kernels(model)
    if args.quant_method == "hqq":
        swapped = quantize_hqq(model, bits=args.quant_bits, axis=args.hqq_axis, compute_dtype=weights_dtype(args),
                               skip_modules=[*VIT_NAMES, *ALIGNER_NAMES] if vision else None)
        prepare_quantized_for_training(model)
        logger.info("QLoRA: %d linear layers quantised by HQQ to %d bits (group size 64, axis %d); norms, "
                    "embeddings and the LM head unquantised", swapped, args.quant_bits,
                    1 if args.hqq_axis is None else args.hqq_axis)
    elif is_quantized(model):
        prepare_quantized_for_training(model)
        logger.info("QLoRA: %d-bit %s base weights (bitsandbytes), norms and embeddings in fp32", args.quant_bits,
                    args.bnb_4bit_quant_type if args.quant_bits == 4 else "LLM.int8")
    enable_checkpointing(model, args, vision=vision)


def checkpointing_kwargs(args: RunArguments) -> dict:
    # Non-reentrant by default: it needs no input gradients and works with frozen embeddings.
    return {"use_reentrant": False, **parse_json_object(args.gradient_checkpointing_kwargs,
                                                        "--gradient_checkpointing_kwargs")}


def enable_checkpointing(model, args: RunArguments, *, vision: bool) -> None:
    """--gradient_checkpointing (with --gradient_checkpointing_kwargs) and, for a vision-language model, the
    vision encoder's --vit_gradient_checkpointing (default: the same)."""
    language, encoder = args.gradient_checkpointing, args.vit_gradient_checkpointing
    if encoder is not None and not vision:
        logger.info("--vit_gradient_checkpointing has no effect: %s is not a vision-language model",
                    getattr(model.config, "name_or_path", "the model"))
    if args.gradient_checkpointing_kwargs and not (language or encoder):
        logger.info("--gradient_checkpointing_kwargs has no effect without --gradient_checkpointing")
    encoder = language if encoder is None else encoder
    if not (language or (vision and encoder)):
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs(args))
    model.config.use_cache = False
    if vision and encoder != language:
        for name, module in model.named_modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = encoder if part_of(name) == "vit" else language


# ------------------------------------------------------------------------------------------- what trains


def tuner_settings(args: RunArguments, *, total_steps: int, task_type: str = "CAUSAL_LM") -> TunerSettings:
    """The adapter of --tuner_type with its flags. ``total_steps``: the run's optimizer steps (AdaLoRA's budget
    schedule needs them); ``task_type``: peft's (SEQ_CLS for a sequence classifier)."""
    options: dict = {}
    # lora_llm on a text model and longlora (LoRA + shifted sparse attention, added by make_trainable) are LoRA.
    tuner = "lora" if args.train_type in ("lora_llm", "longlora") else args.train_type
    if tuner == "adalora":
        options = {"target_r": args.adalora_target_r, "init_r": args.adalora_init_r, "tinit": args.adalora_tinit,
                   "tfinal": args.adalora_tfinal, "deltaT": args.adalora_deltaT, "beta1": args.adalora_beta1,
                   "beta2": args.adalora_beta2, "orth_reg_weight": args.adalora_orth_reg_weight,
                   "total_step": total_steps}
    elif tuner == "vera":
        options = {"r": args.vera_rank, "projection_prng_key": args.vera_projection_prng_key,
                   "vera_dropout": args.vera_dropout, "d_initial": args.vera_d_initial}
    elif tuner == "boft":
        options = {"boft_block_size": args.boft_block_size, "boft_block_num": args.boft_block_num,
                   "boft_n_butterfly_factor": args.boft_n_butterfly_factor, "boft_dropout": args.boft_dropout}
    elif tuner == "fourierft":
        options = {"n_frequency": args.fourier_n_frequency, "scaling": args.fourier_scaling}
    elif tuner == "bone":
        options = {"r": args.reft_rank}
    elif tuner == "adapter":
        options = {"adapter_length": args.adapter_length, "adapter_act": args.adapter_act}
    init = args.init_weights.lower()
    return TunerSettings(tuner=tuner, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout,
                         init_weights=init, use_dora=args.use_dora, use_rslora=args.use_rslora, bias=args.lora_bias,
                         lora_dtype=args.lora_dtype, loftq_bits=args.quant_bits or 4, options=options,
                         task_type=task_type, lora_ga=LoraGaSettings(
                             batch_size=args.lora_ga_batch_size, iters=args.lora_ga_iters,
                             max_length=args.lora_ga_max_length, direction=args.lora_ga_direction,
                             scale=args.lora_ga_scale, stable_gamma=args.lora_ga_stable_gamma))


def check_live_reference(args: RunArguments, settings: TunerSettings, *, live_adapter_reference: bool) -> None:
    """pissa / olora / loftq rewrite the base weights, so the adapter-disabled model is not the starting model;
    ms-swift's Adapter has no switch to turn off (and its start is not the base model either)."""
    if live_adapter_reference and settings.tuner == "adapter":
        raise AlignkitError(
            "--tuner_type adapter: the reference is the model without its adapters, which alignkit computes only "
            "before they are attached; keep --precompute_ref_log_probs true, or pass --ref_model")
    if live_adapter_reference and settings.rewrites_base:
        raise AlignkitError(
            f"--init_weights {args.init_weights} rewrites the base weights, so the adapter-disabled model is not the "
            "starting policy this run's reference must be; keep --precompute_ref_log_probs true (text models: the "
            "reference is computed before the adapter is attached) or use --init_weights true|gaussian")


def make_trainable(model, args: RunArguments, *, settings: TunerSettings | None, targets,
                   modules_to_save: list[str] | None = None, gradient_rows: tuple[list, int] | None = None):
    """The model with what trains: the adapter (new, or --adapters loaded trainable), or the model's own weights
    (full: every one; llamapro: the new blocks; dummy: what the loader left trainable), held in fp32.
    ``targets``: peft's target_modules for the adapter; ``modules_to_save``: default --modules_to_save;
    ``gradient_rows``: (encoded SFT rows, pad id), what --init_weights lora-ga estimates its gradients on."""
    if not is_adapter(args):
        if args.train_type == "llamapro":
            expand_blocks(model, args.llamapro_num_new_blocks, args.llamapro_num_groups)
            if settings is not None and settings.task_type == "SEQ_CLS":
                for name in CLASSIFIER_HEADS:  # a new head starts random: it trains too (peft's SEQ_CLS rule)
                    if isinstance(getattr(model, name, None), torch.nn.Module):
                        getattr(model, name).requires_grad_(True)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()  # the embeddings are frozen (reentrant checkpointing needs it)
        if args.train_type == "dummy":
            # ms-swift's dummy tuner leaves requires_grad to the model's loader (a plugin's model chooses what
            # trains); a plain transformers model leaves every weight trainable.
            trainable, total = count_parameters(model)
            if not trainable:
                raise AlignkitError("--tuner_type dummy: the loaded model has no trainable parameters")
            logger.info("--tuner_type dummy: the model trains as loaded: %d of %d parameters (%s)", trainable, total,
                        "every weight, as --tuner_type full" if trainable == total else "what its loader left "
                        "trainable")
        cast = hold_trainable_in_fp32(model)
        if cast:
            logger.info("%s: %d trained parameters held in fp32 (the weights loaded in %s)", args.train_type, cast,
                        weights_dtype(args))
        return model
    if args.adapters:
        model = load_adapters(model, args.adapters, trainable=True)
    else:
        saved = list(args.modules_to_save) if modules_to_save is None else modules_to_save
        flag = (f"--target_regex {args.target_regex}" if args.target_regex
                else f"--lora_target_modules {' '.join(args.lora_target_modules)}")
        if targets == "all-linear" and hqq_linear_names(model):
            targets = hqq_linear_names(model)  # peft's "all-linear" looks for nn.Linear, which HQQ swapped out
        model = attach_tuner(model, settings, targets=targets, modules_to_save=saved, flag=flag)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    cast = hold_trainable_in_fp32(model, keep_adapter_dtype=args.lora_dtype is not None)
    if cast:
        logger.info("%d trained parameters (modules trained beside the adapter) held in fp32", cast)
    if settings is not None and settings.lora_ga_init and not args.adapters:
        if gradient_rows is None:
            raise AlignkitError("--init_weights lora-ga estimates the gradient of the SFT loss on the training rows: "
                                "it is supported for `sft` of a text model (a causal LM); use --init_weights "
                                "true|pissa|olora here")
        layers = lora_ga.initialise(model, *gradient_rows, settings.lora_ga)
        logger.info("LoRA-GA: %d layers initialised from the gradient of %d batches of %d rows (%s, %s scale); "
                    "their base weights hold W - s B0 A0", layers, settings.lora_ga.iters,
                    settings.lora_ga.batch_size, settings.lora_ga.direction, settings.lora_ga.scale)
    if args.train_type == "longlora":
        shifted_sparse_attention.group_size(args.max_length)  # every batch is padded to --max_length
        shifted_sparse_attention.enable(model)
        logger.info("LongLoRA: shifted sparse attention while training, in groups of %d tokens (--max_length %d / 4)",
                    shifted_sparse_attention.group_size(args.max_length), args.max_length)
    return model


def text_targets(args: RunArguments):
    """peft's target_modules for a text model: --target_regex, else --lora_target_modules."""
    return args.target_regex if args.target_regex else lora_targets(args.lora_target_modules)


# ------------------------------------------------------------------------------------------- what the loop adds


def loop_additions(config, args: RunArguments, model, *, vision: bool):
    """``config`` (a LoopConfig) with the run's per-parameter learning rates and after-step hooks, and the loss
    terms the model adds: (config, [(metric name, term)])."""
    rates = parameter_learning_rates(args, vision=vision)
    hooks: list[Callable[[int], None]] = []
    terms: list[tuple[str, Callable[[], torch.Tensor | None]]] = []
    adalora = adalora_model(model)
    if adalora is not None:
        # Importance scores and the rank budget: after each optimizer step, before the gradients are cleared.
        hooks.append(adalora.update_and_allocate)
        weight = args.adalora_orth_reg_weight
        if weight > 0:
            terms.append(("adalora_orth_reg", lambda: weight * adalora_orthogonal_penalty(adalora)))
    router = RouterLoss.attach(model, args.router_aux_loss_coef)
    if router is not None:
        terms.append(("aux_loss", router))
    return dataclasses.replace(config, learning_rate_of=rates, after_step=tuple(hooks)), terms


def parameter_learning_rates(args: RunArguments, *, vision: bool):
    """The learning rate of each trained parameter (by name), or None when all share --learning_rate."""
    if not vision:
        for flag in ("vit_lr", "aligner_lr"):
            if getattr(args, flag) is not None:
                logger.info("--%s has no effect: the model is not a vision-language model", flag)
    parts = {"vit": args.vit_lr, "aligner": args.aligner_lr} if vision else {}
    ratio = args.lorap_lr_ratio if is_adapter(args) else None
    if ratio is None and not any(v is not None for v in parts.values()):
        return None
    base = args.learning_rate

    def learning_rate_of(name: str, param: torch.nn.Parameter) -> float:
        rate = parts.get(part_of(name)) or base
        return lora_plus_learning_rate(name, param, rate, ratio) if ratio else rate

    return learning_rate_of


class RouterLoss:
    """A mixture-of-experts model's load-balancing loss (``aux_loss`` of its outputs), weighted by
    --router_aux_loss_coef and added to the micro-batch's loss, as ms-swift's trainers do. Read from a forward
    hook on the causal LM: the mean over the micro-batch's forwards that build a graph (not the reference's)."""

    def __init__(self, coef: float):
        self.coef = coef
        self.pending: list[torch.Tensor] = []

    @classmethod
    def attach(cls, model, coef: float):
        from transformers import PreTrainedModel

        if not coef:
            return None
        lm = next((m for m in model.modules() if isinstance(m, PreTrainedModel)
                   and getattr(m.config.get_text_config(), "output_router_logits", False)), None)
        if lm is None:
            return None  # a dense model: said once at load
        router = cls(coef)
        lm.register_forward_hook(router.keep)
        return router

    def keep(self, module, inputs, output) -> None:
        aux = getattr(output, "aux_loss", None)
        if aux is not None and torch.is_grad_enabled():
            self.pending.append(aux)

    def __call__(self) -> torch.Tensor | None:
        if not self.pending:
            return None
        total = torch.stack([a.float() for a in self.pending]).mean()
        self.pending.clear()
        return self.coef * total


@dataclasses.dataclass(frozen=True)
class WithModelLosses:
    """An offline algorithm whose loss also carries terms the model provides (named in the metrics)."""

    algorithm: object
    terms: tuple

    @property
    def loss_unit(self) -> str:
        return self.algorithm.loss_unit

    @property
    def rows(self) -> str:
        return self.algorithm.rows

    @property
    def needs_kl(self) -> bool:
        return getattr(self.algorithm, "needs_kl", False)

    def kl_terms(self, model, batch) -> torch.Tensor:  # KTO's step-wide reference point (alignkit/training/loop.py)
        return self.algorithm.kl_terms(model, batch)

    def for_step(self, kl_sum: float, count: float) -> WithModelLosses:
        return dataclasses.replace(self, algorithm=self.algorithm.for_step(kl_sum, count))

    def loss(self, model, batch):
        loss, metrics = self.algorithm.loss(model, batch)
        for name, term in self.terms:
            value = term()
            if value is not None:
                loss = loss + value
                # The logged loss is what is minimised, as in ms-swift and peft (their outputs.loss carries it).
                metrics = {**metrics, name: float(value.detach()), "loss": metrics["loss"] + float(value.detach())}
        return loss, metrics
