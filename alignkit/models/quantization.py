"""bitsandbytes quantisation: the config a model loads with (QLoRA training, ``alignkit export --quant_bits``) and
the preparation of a quantised model for training an adapter on it.

bitsandbytes quantises the linear layers while the model loads (NF4 / FP4 at 4 bits, LLM.int8 at 8); since 0.45
it has CPU kernels, so this runs without a GPU. Embeddings, norms and the LM head stay unquantised.
"""

from __future__ import annotations

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


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_quantized", False))


def prepare_quantized_for_training(model):
    """peft's preparation for QLoRA: every weight frozen, and the unquantised ones (norms, embeddings, LM head) in
    fp32 for stable training. Gradient checkpointing is the run's own (--gradient_checkpointing).

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for its inference kernel the first time
    the layer runs in eval mode without gradients (the reference log-prob pass, an evaluation), and uses that
    kernel from then on; it has no backward, so gradients would stop flowing through the base layers to the
    adapters below them. Training keeps the differentiable kernel."""
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
