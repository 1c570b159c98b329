"""peft's adapters ("tuners", in ms-swift's word) on a model, as ms-swift builds them
(swift/pipelines/train/tuner.py): LoRA with its options (DoRA, rsLoRA, initialisations, LoRA+, modules trained in
full beside it), AdaLoRA, VeRA, BOFT, FourierFT and Bone (peft's MiSS, Bone's successor); and ms-swift's own
bottleneck Adapter, which peft lacks (models/bottleneck_adapter.py).

What trains is always held in fp32 (``hold_trainable_in_fp32``), whatever precision the frozen base loaded in:
peft does so for its adapters (``autocast_adapter_dtype``), and the same holds for modules trained in full and for
full fine-tuning, whose updates (lr x gradient) are mostly below bf16's resolution of a weight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from alignkit.errors import AlignkitError
from alignkit.models import bottleneck_adapter
from alignkit.models.lora_ga import LoraGaSettings

logger = logging.getLogger("alignkit")

# Initialisations that rewrite the base weights (W -> W - B0 A0, or a quantised W): the adapter-disabled model is
# then not the starting model.
BASE_REWRITING_INITS = ("pissa", "olora", "loftq", "lora-ga")


@dataclass(frozen=True)
class TunerSettings:
    """One adapter's settings (the run's --tuner_type and its flags, as plain values)."""

    tuner: str = "lora"  # lora | lora_llm | adalora | vera | boft | fourierft | bone | adapter
    rank: int = 8
    alpha: int = 32
    dropout: float = 0.05
    init_weights: str = "true"
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    lora_dtype: str | None = None
    loftq_bits: int = 4
    task_type: str = "CAUSAL_LM"  # SEQ_CLS: peft also trains and saves the classification head (seq_cls)
    options: dict = field(default_factory=dict)  # the tuner's own flags, in peft's names (see peft_config)
    lora_ga: LoraGaSettings | None = None  # --init_weights lora-ga: alignkit/models/lora_ga.py

    @property
    def lora_ga_init(self) -> bool:
        return self.init_weights.lower() == "lora-ga"

    @property
    def rewrites_base(self) -> bool:
        return self.init_weights.lower().startswith(BASE_REWRITING_INITS)


def init_value(text: str):
    """--init_weights as peft takes it: 'true'/'false' -> bool, else the string. lora-ga: peft's default (B = 0,
    so the model is unchanged while the gradients are estimated), which models/lora_ga.py then replaces."""
    lowered = text.lower()
    return {"true": True, "false": False, "lora-ga": True}.get(lowered, lowered)


def peft_config(settings: TunerSettings, targets, modules_to_save: list[str]):
    """The peft config of ``settings`` on ``targets`` (peft's target_modules: "all-linear", names or a regex)."""
    import peft

    common = {"target_modules": targets, "modules_to_save": modules_to_save or None,
              "task_type": settings.task_type}
    lora = {"r": settings.rank, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
            "bias": settings.bias, "init_lora_weights": init_value(settings.init_weights), **common}
    options = settings.options
    if settings.tuner in ("lora", "lora_llm"):
        loftq = peft.LoftQConfig(loftq_bits=settings.loftq_bits) if settings.init_weights == "loftq" else {}
        return peft.LoraConfig(use_dora=settings.use_dora, use_rslora=settings.use_rslora, loftq_config=loftq,
                               **lora)
    if settings.tuner == "adalora":
        return peft.AdaLoraConfig(**lora, **options)
    if settings.tuner == "vera":
        return peft.VeraConfig(**common, **options)
    if settings.tuner == "boft":
        return peft.BOFTConfig(**common, **options)
    if settings.tuner == "fourierft":
        return peft.FourierFTConfig(**common, **options)
    if settings.tuner == "bone":
        return peft.MissConfig(init_weights=init_value(settings.init_weights), **common, **options)
    raise AlignkitError(f"--tuner_type {settings.tuner}: unknown tuner")


def attach_tuner(model, settings: TunerSettings, *, targets, modules_to_save: list[str], flag: str):
    """``model`` wrapped by peft with a new adapter (ms-swift's Adapter: the model with its bottleneck adapters);
    ``flag`` (the target flag and its value) begins errors."""
    from peft import get_peft_model

    if settings.tuner == "adapter":
        return bottleneck_adapter.attach(model, length=settings.options["adapter_length"],
                                         act=settings.options["adapter_act"])

    try:
        config = peft_config(settings, targets, expand_modules_to_save(model, modules_to_save))
    except ImportError as error:  # loftq needs scipy
        raise AlignkitError(f"--init_weights {settings.init_weights}: {error} (pip install 'alignkit[quant]')") \
            from error
    try:
        model = get_peft_model(model, config)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as error:  # peft's checks of the combination
        detail = f"{type(error).__name__}: {str(error).strip()[:500]}"
        raise AlignkitError(f"{flag}: peft cannot build the --tuner_type {settings.tuner} adapter ({detail})") \
            from error
    if settings.lora_dtype:
        dtype = getattr(torch, settings.lora_dtype)
        for name, param in model.named_parameters():
            if "lora_" in name and param.requires_grad:
                param.data = param.data.to(dtype)
    return model


def expand_modules_to_save(model, names: list[str]) -> list[str]:
    """ms-swift's shorthands: all-embedding (every embedding layer), all-norm (every norm layer)."""
    expanded: list[str] = []
    for name in names:
        if name in ("all-embedding", "all-norm"):
            found = sorted({n.split(".")[-1] for n, m in model.named_modules() if n and _is(m, name)})
            expanded += found
        else:
            expanded.append(name)
    return list(dict.fromkeys(expanded))


def _is(module: nn.Module, kind: str) -> bool:
    if kind == "all-embedding":
        return isinstance(module, nn.Embedding)
    return "norm" in type(module).__name__.lower()


def hold_trainable_in_fp32(model, *, keep_adapter_dtype: bool = False) -> int:
    """Cast every trained bf16/fp16 parameter to fp32 (master weights; AdamW's states follow), leaving frozen
    ones in their precision. ``keep_adapter_dtype``: --lora_dtype chose the adapter's precision. Returns the
    number of parameters cast."""
    cast = 0
    for name, param in model.named_parameters():
        if not param.requires_grad or param.dtype not in (torch.bfloat16, torch.float16):
            continue
        if keep_adapter_dtype and "lora_" in name:
            continue
        param.data = param.data.float()
        cast += param.numel()
    return cast


def lora_plus_learning_rate(name: str, param: nn.Parameter, learning_rate: float, ratio: float) -> float:
    """LoRA+ (arXiv 2402.12354) as peft's create_loraplus_optimizer and ms-swift group them: the B matrices and
    1-D parameters at lr x ratio, LoRA's embedding matrices at 1e-6, the rest (A matrices) at lr."""
    if "lora_embedding_" in name:
        return 1e-6
    if "lora_B" in name or param.ndim == 1:
        return learning_rate * ratio
    return learning_rate


def adalora_model(model):
    """peft's AdaLoraModel inside ``model`` (a PeftModel, maybe wrapped by the reward head), or None."""
    from peft.tuners.adalora import AdaLoraModel

    return next((m for m in model.modules() if isinstance(m, AdaLoraModel)), None)


def adalora_orthogonal_penalty(adalora) -> torch.Tensor:
    """AdaLoRA's regulariser R(P, Q) = mean over the adapted matrices of ||P^T P - I||_F (A: ||A A^T - I||_F),
    as peft's AdaLoraModel.forward adds it when the model computes its own loss (arXiv 2303.10512, Eq. 4)."""
    name = adalora.trainable_adapter_name
    terms = []
    for n, p in adalora.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            covariance = p @ p.T if "lora_A" in n else p.T @ p  # (r, r)
            terms.append(torch.linalg.matrix_norm(covariance - torch.eye(*covariance.shape, device=p.device)))
    return torch.stack(terms).mean() if terms else torch.zeros(())
