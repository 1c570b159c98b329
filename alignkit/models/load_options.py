"""How a trained model loads beyond its weights' precision: the attention implementation, bitsandbytes
quantisation, and what the run writes into its config (RoPE scaling, context length, mixture-of-experts
settings). ``LoadOptions`` holds the run's flags as plain values; ``from_pretrained_kwargs`` turns them into
what transformers' ``from_pretrained`` takes, checking first what would fail later with a less clear message.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

# ms-swift's --attn_impl names -> transformers' attn_implementation.
ATTENTION = {"flash_attn": "flash_attention_2"}
# The package each flash attention implementation is imported from (and its pip name).
FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"),
                  "flash_attention_3": ("flash_attn_interface", "flash-attn-3")}
# Config attributes that count a mixture-of-experts model's experts, across HF families.
EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class LoadOptions:
    attn_implementation: str | None = None  # --attn_impl, in transformers' naming
    quantization: Any = None  # a transformers BitsAndBytesConfig (alignkit.models.quantization)
    experts_implementation: str | None = None  # --experts_impl
    router_aux_loss_coef: float = 0.0  # --router_aux_loss_coef
    rope_scaling: dict | None = None  # --rope_scaling, parsed
    max_model_len: int | None = None  # --max_model_len

    def from_pretrained_kwargs(self, model_path: str, revision: str | None, device_map) -> dict:
        kwargs: dict[str, Any] = {}
        if self.attn_implementation:
            kwargs["attn_implementation"] = check_attention(self.attn_implementation)
        if self.quantization is not None:
            kwargs["quantization_config"] = self.quantization
            if device_map is None:  # bitsandbytes quantises as the weights reach their device
                kwargs["device_map"] = {"": process_device()}
        if self.experts_implementation or self.router_aux_loss_coef or self.rope_scaling or self.max_model_len:
            from transformers import AutoConfig

            try:
                config = AutoConfig.from_pretrained(model_path, revision=revision)
            except Exception as error:  # each broken file raises its parser's own error type
                raise AlignkitError(f"cannot read the config of {model_path} ({type(error).__name__}: {error})") \
                    from error
            kwargs["config"] = config
            self._write_config(config)
            if self.experts_implementation and is_moe(config):
                kwargs["experts_implementation"] = self.experts_implementation
        return kwargs

    def _write_config(self, config) -> None:
        text = config.get_text_config()
        moe = is_moe(config)
        for flag, value in (("--experts_impl", self.experts_implementation),
                            ("--router_aux_loss_coef", self.router_aux_loss_coef)):
            if value and not moe:
                logger.info("%s %s has no effect: the model has no experts (not a mixture-of-experts model)", flag,
                            value)
        if moe and self.router_aux_loss_coef:
            # The model then returns its load-balancing loss (aux_loss), which the run adds to the loss.
            text.router_aux_loss_coef = self.router_aux_loss_coef
            text.output_router_logits = True
        set_context_length(text, self.rope_scaling, self.max_model_len)


def process_device() -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def check_attention(name: str) -> str:
    """transformers' name for --attn_impl ``name`` (for training); a flash attention whose package or GPU is missing
    stops here, naming the package (transformers would otherwise try to download a kernel from the hub)."""
    name = ATTENTION.get(name, name)
    if name in FLASH_PACKAGES:
        module, package = FLASH_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise AlignkitError(f"--attn_impl {name} needs the {package} package, which is not installed "
                                f"(pip install {package}; it needs a CUDA GPU); use --attn_impl sdpa")
        if not torch.cuda.is_available():
            raise AlignkitError(f"--attn_impl {name} needs a CUDA GPU; on this machine use --attn_impl sdpa")
    if name == "flex_attention" and not torch.cuda.is_available():
        raise AlignkitError("--attn_impl flex_attention cannot train on a CPU (torch has no backward for it there); "
                            "use --attn_impl sdpa")
    return name


def is_moe(config) -> bool:
    text = config.get_text_config()
    return any(getattr(text, name, None) for name in EXPERT_COUNTS)


def set_context_length(text_config, rope_scaling: dict | None, max_model_len: int | None) -> None:
    """--rope_scaling and --max_model_len written into the (text) config, as ms-swift does: a scaling without a
    factor gets ceil(max_model_len / the original context) (at least 1), the original context is recorded as
    original_max_position_embeddings, and max_position_embeddings becomes --max_model_len (or original x
    factor). A model that already scales RoPE gets its factor recomputed for a new --max_model_len."""
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    if rope_scaling is None and max_model_len is not None and params.get("rope_type", "default") != "default":
        rope_scaling = {k: v for k, v in params.items() if k != "factor"}
    if rope_scaling is None:
        if max_model_len is not None:
            text_config.max_position_embeddings = max_model_len
            logger.info("--max_model_len: max_position_embeddings set to %d", max_model_len)
        return
    if any(isinstance(v, dict) for v in params.values()):
        raise AlignkitError("--rope_scaling: this model has a RoPE setting per attention type; alignkit cannot "
                            "rewrite it from one value")
    origin = params.get("original_max_position_embeddings") or text_config.max_position_embeddings
    scaling = dict(rope_scaling)
    if "factor" not in scaling:
        if max_model_len is None:
            raise AlignkitError(f"--rope_scaling {scaling['rope_type']} without a factor needs --max_model_len (the "
                                "factor is --max_model_len over the model's context length)")
        scaling["factor"] = max(float(math.ceil(max_model_len / origin)), 1.0)
    scaling.setdefault("original_max_position_embeddings", origin)
    text_config.rope_parameters = {**params, **scaling}
    text_config.max_position_embeddings = max_model_len or int(origin * scaling["factor"])
    logger.info("--rope_scaling: rope_parameters %s, max_position_embeddings %d", text_config.rope_parameters,
                text_config.max_position_embeddings)
