"""Quantised base weights for QLoRA: bitsandbytes' config a model loads with (also ``alignkit export
--quant_bits``), HQQ's quantisation of a loaded model, and the preparation of a quantised model for training an
adapter on it.

bitsandbytes quantises the linear layers while the model loads (NF4 / FP4 at 4 bits, LLM.int8 at 8); since 0.45
it has CPU kernels, so this runs without a GPU. HQQ (half-quadratic quantisation, 1-8 bits, no calibration data)
quantises after loading: transformers 5 cannot load through ``HqqConfig`` yet, so each linear layer is swapped for
hqq's own ``HQQLinear`` with the settings ms-swift's ``HqqConfig(nbits, axis)`` gives (group size 64, axis 1 by
default); peft puts its LoRA layers on ``HQQLinear``. Embeddings, norms and the LM head stay unquantised.
"""

from __future__ import annotations

import functools
import logging

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "uint8": torch.uint8}


def bnb_config(bits: int, *, compute_dtype: torch.dtype, quant_type: str = "nf4", double_quant: bool = True,
               quant_storage: str | None = None, skip_modules: list[str] | None = None):
    """transformers' BitsAndBytesConfig for ``bits`` (4 or 8). ``skip_modules``: modules left unquantised (a
    vision-language model's vision encoder and aligner)."""
    try:
        import bitsandbytes  # noqa: F401
    except ModuleNotFoundError as error:
        raise AlignkitError("--quant_method bnb needs bitsandbytes: pip install 'alignkit[quant]'") from error
    from transformers import BitsAndBytesConfig

    if bits == 4:
        storage = DTYPES[quant_storage] if quant_storage else torch.uint8
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                                  bnb_4bit_quant_storage=storage, llm_int8_skip_modules=skip_modules)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    raise AlignkitError(f"--quant_bits {bits}: bitsandbytes quantises to 4 or 8 bits")


HQQ_BITS = (1, 2, 3, 4, 8)
HQQ_GROUP_SIZE = 64  # transformers' HqqConfig default, which ms-swift uses


def quantize_hqq(model, *, bits: int, axis: int | None, compute_dtype: torch.dtype,
                 skip_modules: list[str] | None = None) -> int:
    """Swap every linear layer of ``model`` but the LM head (and ``skip_modules``: a vision-language model's
    vision encoder and aligner) for hqq's ``HQQLinear`` at ``bits``, on the layer's own device. Returns how many
    layers were quantised; marks the model for peft (``hqq_quantized``) and for ``is_quantized``."""
    try:
        from hqq.core.quantize import BaseQuantizeConfig
    except ModuleNotFoundError as error:
        raise AlignkitError("--quant_method hqq needs hqq: pip install 'alignkit[quant]'") from error
    skip = ("lm_head", *(skip_modules or ()))
    config = BaseQuantizeConfig(nbits=bits, group_size=HQQ_GROUP_SIZE, axis=1 if axis is None else axis)
    swaps = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and not any(part in skip for part in name.split("."))]
    for name, linear in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear.weight.requires_grad_(False)
        quantized = _hqq_linear_class()(linear, quant_config=config, compute_dtype=compute_dtype,
                                        device=str(linear.weight.device), del_orig=True)
        setattr(parent, child, quantized)
    model.hqq_quantized = True  # peft's prepare_model_for_kbit_training and LoRA dispatch look for this
    model.hqq_linear_names = sorted({name.rpartition(".")[2] for name, _ in swaps})
    return len(swaps)


@functools.cache
def _hqq_linear_class():
    """hqq's HQQLinear, run in its compute dtype outside autocast. Its backward (an autograd Function) multiplies
    the incoming gradient by the dequantised weight without autocast: under bf16 autocast the forward's output,
    and so that gradient, would be bf16 against an fp32 weight (or the reverse), and the backward would fail."""
    from hqq.core.quantize import HQQLinear

    class HQQLinearOutsideAutocast(HQQLinear):
        # __call__, not forward: hqq's set_backend assigns ``forward`` on the class each time a layer is built.
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return super().__call__(x.to(self.compute_dtype))

    return HQQLinearOutsideAutocast


def hqq_linear_names(model) -> list[str]:
    """The leaf names of the layers ``quantize_hqq`` swapped (peft's "all-linear" does not see ``HQQLinear``)."""
    return list(getattr(model, "hqq_linear_names", []))


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hqq_quantized", False))


def prepare_quantized_for_training(model):
    """peft's preparation for QLoRA: every weight frozen, and the unquantised ones (norms, embeddings, LM head) in
    fp32 for stable training. Gradient checkpointing is the run's own (--gradient_checkpointing).

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for its inference kernel the first time
    the layer runs in eval mode without gradients (the reference log-prob pass, an evaluation), and uses that
    kernel from then on; it has no backward, so gradients would stop flowing through the base layers to the
    adapters below them. Training keeps the differentiable kernel."""
    from peft import prepare_model_for_kbit_training

    if not getattr(model, "hqq_quantized", False):
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
