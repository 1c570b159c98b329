"""GaLore (Zhao et al. 2024, https://arxiv.org/abs/2403.03507): the gradients of chosen weight matrices are
projected onto a rank-r subspace (refreshed every ``update_proj_gap`` steps) where the optimizer keeps its
states, so full fine-tuning needs far less optimizer memory. Built as ms-swift's ``--use_galore`` builds it
(swift/optimizers/galore/utils.py) on the maintained ``galore-torch`` package:

- the weights of the ``nn.Linear`` (and with ``--galore_with_embedding``, ``nn.Embedding``) modules whose name
  contains one of ``--galore_target_modules`` (unset: every linear layer's name but the LM head, ms-swift's
  ``find_all_linears``) form one parameter group with rank, gap, scale and projection type; the other trainable
  parameters form the usual groups (weight decay on matrices only);
- ``--optim`` picks the GaLore optimizer: adamw_torch / adamw_torch_fused → GaLoreAdamW, adafactor →
  GaLoreAdafactor (no relative step, no parameter scaling), the 8-bit AdamW names → GaLoreAdamW8bit;
- ``--galore_optim_per_parameter``: ms-swift's one optimizer per parameter, all stepped together, which is one
  group per parameter here; as in ms-swift its projection gap is doubled and its schedule runs over twice the
  steps (``schedule_stretch``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError

HEADS = ("lm_head", "score", "output", "embed_out", "output_layer", "v_head")
PROJECTION_TYPES = ("std", "reverse_std", "right", "left", "full")
ADAMW = ("adamw_torch", "adamw_torch_fused", "adamw_hf")
ADAMW_8BIT = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit")


@dataclass(frozen=True)
class GaloreSettings:
    target_modules: tuple[str, ...] | None = None
    rank: int = 128
    update_proj_gap: int = 50
    scale: float = 1.0
    proj_type: str = "std"
    optim_per_parameter: bool = False
    with_embedding: bool = False


def schedule_stretch(settings: GaloreSettings | None) -> int:
    """How many times longer the schedule's warmup and length are: 2 with one optimizer per parameter (ms-swift
    builds those schedulers over twice the steps), else 1."""
    return 2 if settings is not None and settings.optim_per_parameter else 1


def check_galore(settings: GaloreSettings, optim: str) -> None:
    if importlib.util.find_spec("galore_torch") is None:
        raise AlignkitError("--use_galore needs the galore-torch package: pip install galore-torch "
                            "(or pip install 'alignkit[galore]')")
    if settings.proj_type not in PROJECTION_TYPES:
        raise AlignkitError(f"--galore_proj_type {settings.proj_type}: choose from {', '.join(PROJECTION_TYPES)}")
    if settings.rank < 1 or settings.update_proj_gap < 1:
        raise AlignkitError("--galore_rank and --galore_update_proj_gap must be positive")
    if optim not in ADAMW + ADAMW_8BIT + ("adafactor",):
        raise AlignkitError(f"--use_galore with --optim {optim}: GaLore has AdamW ({', '.join(ADAMW)}), Adafactor "
                            f"(adafactor) and 8-bit AdamW ({', '.join(ADAMW_8BIT)}), as in ms-swift")


def galore_weights(model: torch.nn.Module, settings: GaloreSettings) -> list[torch.nn.Parameter]:
    """The trainable weights GaLore projects (see the module docstring)."""
    targets = settings.target_modules
    if targets is None:
        targets = tuple({name.split(".")[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in HEADS})
        if settings.with_embedding:
            targets += tuple({name.split(".")[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Embedding)})
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return [module.weight for name, module in model.named_modules()
            if isinstance(module, kinds) and module.weight.requires_grad and any(t in name for t in targets)]


def galore_optimizer_class(optim: str, learning_rate: float, betas: tuple[float, float], eps: float):
    if optim == "adafactor":
        from galore_torch import GaLoreAdafactor

        return GaLoreAdafactor, {"lr": learning_rate, "scale_parameter": False, "relative_step": False}
    adam = {"lr": learning_rate, "betas": betas, "eps": eps}
    if optim in ADAMW_8BIT:
        from galore_torch import GaLoreAdamW8bit

        return GaLoreAdamW8bit, {**adam, "optim_bits": 8, "is_paged": "paged" in optim}
    from galore_torch import GaLoreAdamW

    return GaLoreAdamW, adam


def make_galore(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """The GaLore optimizer of ``model``'s trainable parameters under a LoopConfig with ``galore`` set."""
    settings: GaloreSettings = config.galore
    projected = galore_weights(model, settings)
    ids = {id(p) for p in projected}
    gap = settings.update_proj_gap * schedule_stretch(settings)
    galore = {"rank": settings.rank, "update_proj_gap": gap, "scale": settings.scale,
              "proj_type": settings.proj_type, "weight_decay": config.weight_decay}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if settings.optim_per_parameter:
        groups = [{"params": [p], **galore} for p in projected]
        groups += [{"params": [p], "weight_decay": config.weight_decay if p.ndim >= 2 else 0.0} for p in others]
    else:
        groups = [{"params": projected, **galore},
                  {"params": [p for p in others if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in others if p.ndim < 2], "weight_decay": 0.0}]
    optimizer_cls, kwargs = galore_optimizer_class(config.optim, config.learning_rate, config.adam_betas,
                                                   config.adam_epsilon)
    return optimizer_cls([g for g in groups if g["params"]], **kwargs)


def galore_settings(args) -> GaloreSettings | None:
    """--use_galore and its --galore_* flags (RunArguments) → GaloreSettings; None without --use_galore."""
    if not args.use_galore:
        return None
    return GaloreSettings(
        target_modules=tuple(args.galore_target_modules) if args.galore_target_modules else None,
        rank=args.galore_rank, update_proj_gap=args.galore_update_proj_gap, scale=args.galore_scale,
        proj_type=args.galore_proj_type, optim_per_parameter=args.galore_optim_per_parameter,
        with_embedding=args.galore_with_embedding,
    )
