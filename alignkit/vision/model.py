"""Loading an image-text-to-text model and its processor; which parameters train (freeze flags, LoRA targets).

A model is vision-language when its config has a ``vision_config``. Its modules fall in three parts, named as
in ms-swift: the vision encoder (ViT), the aligner (the projector into the language model's embedding space)
and the language model (LLM, with its LM head). Across HF families:

    part      LLaVA(-NeXT)            Qwen2-VL / Qwen2.5-VL    Idefics3 / SmolVLM
    vit       vision_tower            visual                   vision_model
    aligner   multi_modal_projector   visual.merger            connector
    llm       language_model, lm_head language_model, lm_head  text_model, lm_head
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.models.load import DEFAULT_LORA_TARGETS, _load_error
from alignkit.models.load_options import LoadOptions

VIT_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")
ALIGNER_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")


def is_vision_model(model_path: str) -> bool:
    """True when the directory's config.json has a ``vision_config``. An unreadable config is left to the
    model loader, whose error names the file."""
    config = Path(model_path) / "config.json"
    try:
        return config.is_file() and "vision_config" in json.loads(config.read_text())
    except (ValueError, OSError):
        return False


def load_vision_model(model_path: str, revision: str | None = None, dtype: torch.dtype = torch.float32, *,
                      options: LoadOptions | None = None):
    """``options``: attention, quantisation and config overrides (alignkit.models.load_options)."""
    from transformers import AutoModelForImageTextToText

    extra = options.from_pretrained_kwargs(model_path, revision, None) if options else {}
    try:
        return AutoModelForImageTextToText.from_pretrained(model_path, revision=revision, dtype=dtype, **extra)
    except Exception as error:  # each broken file raises its parser's own error type
        raise _load_error(model_path, error) from error


def load_processor(model_path: str, revision: str | None = None):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_path, revision=revision)
    except Exception as error:
        raise _load_error(model_path, error) from error
    if not hasattr(processor, "image_processor"):
        raise AlignkitError(f"{model_path}: its processor ({type(processor).__name__}) has no image processor, "
                            "so it cannot turn images into model inputs")
    if processor.tokenizer.pad_token is None:
        # Padding positions are masked out everywhere; any id works, EOS is the usual choice.
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def vision_model_path(model: str | None, adapters: list[str], ckpt_dir: str | None) -> str | None:
    """The base model's directory when --model / --adapters / --ckpt_dir name a vision-language model, else None."""
    from alignkit.models.load import resolve_checkpoint, resolve_model_path

    model, _ = resolve_checkpoint(model, adapters, ckpt_dir)
    path = resolve_model_path(model)
    return path if is_vision_model(path) else None


def processor_source(adapter: str | None, model_path: str) -> str:
    """A training checkpoint saves the processor it used; an adapter without one takes the base model's."""
    if adapter and any((Path(adapter) / name).is_file() for name in ("processor_config.json",
                                                                     "preprocessor_config.json")):
        return adapter
    return model_path


def load_vision_for_inference(model: str | None, adapters: list[str], ckpt_dir: str | None, dtype: str):
    """Model (with adapters, in eval mode, one vision forward per shared pair) and processor for infer, eval and
    deploy; the vision-language counterpart of ``alignkit.models.load.load_for_inference``."""
    from alignkit.models.load import load_adapters, resolve_checkpoint, resolve_dtype, resolve_model_path
    from alignkit.vision.shared_images import enable_shared_images

    model, adapters = resolve_checkpoint(model, adapters, ckpt_dir)
    model_path = resolve_model_path(model)
    processor = load_processor(model_path)
    # Scores and generations should not depend on autocast: on CPU, "auto" keeps exact fp32 weights.
    precision = "fp32" if dtype == "auto" and not torch.cuda.is_available() else resolve_dtype(dtype)
    lm = load_vision_model(model_path, dtype={"fp32": torch.float32, "bf16": torch.bfloat16,
                                              "fp16": torch.float16}[precision])
    enable_shared_images(lm)
    if adapters:
        lm = load_adapters(lm, adapters, trainable=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return lm.to(device).eval(), processor


def part_of(name: str) -> str:
    """'vit', 'aligner' or 'llm' for a parameter or module name (see the module docstring's table)."""
    segments = name.split(".")
    if any(s in ALIGNER_NAMES for s in segments):
        return "aligner"
    if any(s in VIT_NAMES for s in segments):
        return "vit"
    return "llm"


def frozen_parts(*, freeze_vit: bool, freeze_aligner: bool, freeze_llm: bool) -> set[str]:
    return {part for part, frozen in (("vit", freeze_vit), ("aligner", freeze_aligner), ("llm", freeze_llm)) if frozen}


def freeze(model, frozen: set[str]) -> None:
    """Full training: stop gradients into the frozen parts."""
    if frozen == {"vit", "aligner", "llm"}:
        raise AlignkitError("--freeze_vit, --freeze_aligner and --freeze_llm together leave nothing to train")
    for name, parameter in model.named_parameters():
        if part_of(name) in frozen:
            parameter.requires_grad_(False)


def outermost_part_modules(model, parts: set[str]) -> list[str]:
    """The names (last segment) of the outermost modules of the given parts ("vit", "aligner"): what peft's
    modules_to_save matches to train them in full beside an adapter."""
    names = set()
    for name, _ in model.named_modules():
        segments = name.split(".")
        for segment in segments:
            kind = "aligner" if segment in ALIGNER_NAMES else "vit" if segment in VIT_NAMES else None
            if kind is not None:
                if kind in parts:
                    names.add(segment)
                break
    return sorted(names)


def vision_lora_targets(model, names: list[str], frozen: set[str]) -> list[str]:
    """``--lora_target_modules`` → full module names for peft.

    DEFAULT: the attention q/k/v projections of the language model only. ALL / all-linear: every linear layer
    but the LM head in the parts the freeze flags leave open (the language model, plus the vision encoder
    with ``--freeze_vit false`` and the aligner with ``--freeze_aligner false``), as ms-swift does. Other
    names are matched as module-name suffixes within the open parts.
    """
    upper = [n.upper() for n in names]
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] != "lm_head"]
    if upper == ["DEFAULT"]:
        chosen = [n for n in linear if part_of(n) == "llm" and n.split(".")[-1] in DEFAULT_LORA_TARGETS]
    elif upper in (["ALL"], ["ALL-LINEAR"]):
        chosen = [n for n in linear if part_of(n) not in frozen]
    else:
        chosen = [n for n in linear if part_of(n) not in frozen and any(n == t or n.endswith("." + t) for t in names)]
    if not chosen:
        raise AlignkitError(f"--lora_target_modules {' '.join(names)}: no linear layer matches in the parts that are "
                            f"not frozen ({', '.join(sorted(frozen)) or 'none'} frozen)")
    return chosen
