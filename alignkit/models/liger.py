"""``--use_liger_kernel``: Liger's Triton kernels (RMSNorm, SwiGLU / GeGLU MLP, RoPE, ...) in place of a loaded model's
own modules, as transformers' Trainer applies them for ms-swift (``_apply_liger_kernel_to_instance``, which picks
``apply_liger_kernel_to_<model_type>``). The kernels compute the same functions with less memory traffic.

Liger's fused linear cross-entropy (the loss computed without materialising the logits) is left off: alignkit's
objectives take per-token log-probs from the logits (alignkit/models/logprobs.py), so the model's forward must
return them.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")


def check_liger_available() -> None:
    """Stop before any data or model is loaded where the kernels cannot run: Triton kernels need a CUDA GPU,
    and the liger-kernel package."""
    if not torch.cuda.is_available():
        raise AlignkitError("--use_liger_kernel: Liger's kernels are Triton GPU kernels and need a CUDA GPU; this "
                            "machine has none (on a CPU leave --use_liger_kernel off)")
    if importlib.util.find_spec("liger_kernel") is None:
        raise AlignkitError("--use_liger_kernel needs the liger-kernel package, which is not installed "
                            "(pip install liger-kernel, or alignkit[liger])")


def liger_model_types() -> list[str]:
    """The model types (config.model_type) Liger has kernels for."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)


def apply_liger_kernels(model) -> str:
    """Replace ``model``'s modules by Liger's kernels (a transformers model just loaded, before any adapter);
    returns its model type. A model type Liger has no kernels for stops the run instead of training without them."""
    model_type = getattr(model.config, "model_type", None)
    supported = liger_model_types()
    if model_type not in supported:
        raise AlignkitError(f"--use_liger_kernel: Liger has no kernels for model type {model_type!r}; it has them "
                            f"for {', '.join(supported)}. Leave --use_liger_kernel off for this model")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False)
    logger.info("--use_liger_kernel: Liger's kernels applied to the %s model", model_type)
    return model_type
