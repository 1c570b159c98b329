"""The optimizer and the learning-rate schedule of a run, by transformers' and ms-swift's names.

- ``--optim`` (transformers' ``OptimizerNames``): built by transformers' own
  ``Trainer.get_optimizer_cls_and_kwargs``, so a name and its ``--optim_args`` mean what they mean there;
  the names that need no extra package or model structure are offered (``SUPPORTED_OPTIM``).
- ``--optimizer muon`` (ms-swift's optimizer plugin, which takes precedence over ``--optim``): Muon
  (``torch.optim.Muon``) on the 2-D hidden matrices, AdamW on embeddings, the LM head and 1-D parameters,
  as ms-swift's ``MuonOptimizerCallback`` splits them (its Moonlight Muon scales the update to AdamW's RMS,
  which is torch's ``adjust_lr_fn="match_rms_adamw"``); ``--optimizer muonclip``: ms-swift's MuonClip, Muon with
  QK-Clip (``alignkit.training.muonclip``).
- ``--lr_scheduler_type`` (transformers' ``SchedulerType``) with ``--lr_scheduler_kwargs``, built by
  transformers' ``get_scheduler``; ``reduce_lr_on_plateau`` steps on the evaluation metric instead of every
  update (``Runner`` does that), as transformers' Trainer does.

Weight decay goes to parameters with 2 or more dimensions only (biases and norm scales are 1-D). Parameters
may learn at their own rates (LoRA+'s ``--lorap_lr_ratio``, ``--vit_lr``, ``--aligner_lr``:
``LoopConfig.learning_rate_of``): one parameter group per (learning rate, decayed or not), the first two at
``--learning_rate``, so the logged learning rate is that one.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from alignkit.errors import AlignkitError
from alignkit.training.muonclip import make_muonclip, warn_ignored_optim_args

BITSANDBYTES_OPTIM = (
    "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "lion_8bit", "lion_32bit",
    "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    "ademamix_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit",
)
SUPPORTED_OPTIM = ("adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop", *BITSANDBYTES_OPTIM)
OPTIMIZER_PLUGINS = ("default", "muon", "muonclip")
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
             "warmup_stable_decay")
PLATEAU = "reduce_lr_on_plateau"


def check_optimizer(config) -> None:
    """Refuse an optimizer alignkit cannot build (a LoopConfig's), naming what works, and build it once on a
    throw-away layer so that wrong --optim_args stop the run before any data or model is loaded."""
    check_optimizer_name(config.optim, config.optimizer)
    if config.galore is not None:
        from alignkit.training.galore import check_galore

        check_galore(config.galore, config.optim)
        if config.optimizer is not None:
            raise AlignkitError(f"--use_galore with --optimizer {config.optimizer}: GaLore is the optimizer; drop one")
    if config.optimizer == "muonclip":
        warn_ignored_optim_args(config.optim_args)
    elif config.optimizer != "muon":
        parse_optim_args(config.optim_args)  # transformers' parser fails with a bare ValueError
    make_optimizer(torch.nn.Linear(2, 2), config)


def check_optimizer_name(optim: str, optimizer: str | None) -> None:
    if optimizer is not None and optimizer not in OPTIMIZER_PLUGINS:
        hint = {"galore": "GaLore is not supported", "lorap": "LoRA+ is chosen by --lorap_lr_ratio",
                "multimodal": "per-part learning rates are chosen by --vit_lr / --aligner_lr"}.get(optimizer)
        raise AlignkitError(f"--optimizer {optimizer}: not available" + (f" ({hint})" if hint else "") +
                            f"; alignkit has: {', '.join(OPTIMIZER_PLUGINS)} (or --optim for transformers' "
                            "optimizers)")
    if optim not in SUPPORTED_OPTIM:
        hint = " (transformers 5 removed adamw_hf; adamw_torch is the same algorithm)" if optim == "adamw_hf" else ""
        raise AlignkitError(f"--optim {optim}: not available{hint}; alignkit builds {', '.join(SUPPORTED_OPTIM)}")
    if optim in BITSANDBYTES_OPTIM:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise AlignkitError(f"--optim {optim} needs the bitsandbytes package (pip install bitsandbytes)")


def parse_optim_args(text: str | None) -> dict[str, str]:
    """transformers' ``--optim_args`` format: ``key=value`` pairs separated by commas."""
    if not text:
        return {}
    pairs = {}
    for item in text.replace(" ", "").split(","):
        if item.count("=") != 1:
            raise AlignkitError(f"--optim_args {text!r}: expected key=value pairs separated by commas")
        key, value = item.split("=")
        pairs[key] = value
    return pairs


def make_optimizer(model, config) -> torch.optim.Optimizer:
    """The optimizer of ``model``'s trainable parameters under a LoopConfig (see the module docstring)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.galore is not None:
        from alignkit.training.galore import make_galore

        return make_galore(model, config)
    if config.optimizer == "muon":
        return make_muon(named, config)
    if config.optimizer == "muonclip":
        return make_muonclip(model, config)
    groups = parameter_groups(named, config)
    optimizer_cls, kwargs = optimizer_class(config)
    try:
        return optimizer_cls(groups, **kwargs)
    except (RuntimeError, TypeError) as exc:
        if config.optim == "adamw_torch_fused":  # the default: fused kernels need a supported device and dtype
            kwargs.pop("fused")
            return optimizer_cls(groups, foreach=True, **kwargs)
        raise AlignkitError(f"--optim {config.optim}: {optimizer_cls.__name__} cannot be built here ({exc})") from exc
    except ValueError as exc:
        raise AlignkitError(f"--optim {config.optim} --optim_args {config.optim_args!r}: {exc}") from exc


def parameter_groups(named: list, config) -> list[dict]:
    """One group per (learning rate, decayed or not) of the named trainable parameters; the first two are always
    those at --learning_rate (kept when empty), so the schedule's first learning rate is --learning_rate's."""
    base = config.learning_rate
    by_key: dict[tuple[float, bool], list] = {(base, True): [], (base, False): []}
    for name, param in named:
        rate = config.learning_rate_of(name, param) if config.learning_rate_of else base
        by_key.setdefault((rate, param.ndim >= 2), []).append(param)
    return [{"params": params, "lr": rate, "weight_decay": config.weight_decay if decays else 0.0}
            for (rate, decays), params in by_key.items() if params or rate == base]


def optimizer_class(config) -> tuple[type, dict]:
    """transformers' class and keyword arguments for ``config.optim`` and ``config.optim_args``."""
    from transformers import Trainer

    settings = SimpleNamespace(optim=config.optim, optim_args=config.optim_args, learning_rate=config.learning_rate,
                               adam_beta1=config.adam_betas[0], adam_beta2=config.adam_betas[1],
                               adam_epsilon=config.adam_epsilon, weight_decay=config.weight_decay,
                               warmup_steps=config.warmup_steps)
    try:
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(settings)
    except (ValueError, ImportError, KeyError) as exc:
        raise AlignkitError(f"--optim {config.optim} --optim_args {config.optim_args!r}: {exc}") from exc
    return optimizer_cls, dict(kwargs)


def make_muon(named: list, config) -> torch.optim.Optimizer:
    """ms-swift's Muon split: Muon for trainable matrices that are neither embeddings nor the LM head."""
    embeddings = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")

    def hidden_matrix(name: str, param) -> bool:
        return param.ndim == 2 and not any(part in name for part in embeddings)

    options = parse_optim_args(config.optim_args)
    muon_kwargs = {"adjust_lr_fn": options.pop("adjust_lr_fn", "match_rms_adamw")}
    for key, kind in (("momentum", float), ("eps", float), ("ns_steps", int)):
        if key in options:
            muon_kwargs[key] = kind(options.pop(key))
    if "nesterov" in options:
        muon_kwargs["nesterov"] = options.pop("nesterov").lower() in ("true", "1", "yes")
    if options:
        raise AlignkitError(f"--optimizer muon --optim_args: unknown {', '.join(options)} (Muon takes momentum, "
                            "nesterov, eps, ns_steps, adjust_lr_fn)")
    matrices = [(name, p) for name, p in named if hidden_matrix(name, p)]
    rest = [(name, p) for name, p in named if not hidden_matrix(name, p)]
    optimizers = []
    if matrices:
        try:
            optimizers.append(torch.optim.Muon([g for g in parameter_groups(matrices, config) if g["params"]],
                                               lr=config.learning_rate, weight_decay=config.weight_decay,
                                               **muon_kwargs))
        except (ValueError, TypeError) as exc:
            raise AlignkitError(f"--optimizer muon --optim_args: {exc}") from exc
    if rest:
        optimizers.append(torch.optim.AdamW([g for g in parameter_groups(rest, config) if g["params"]],
                                            lr=config.learning_rate, betas=config.adam_betas,
                                            eps=config.adam_epsilon))
    return Combined(optimizers)


class Combined(torch.optim.Optimizer):
    """Several optimizers stepped as one: their parameter groups are this one's (the same dicts), so the
    learning-rate schedule, gradient clipping and ``zero_grad`` see every parameter; the state dict holds each."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        # add_param_group appends the very dicts it is given: the inner optimizers' groups are shared.
        super().__init__([group for o in self.optimizers for group in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for optimizer, saved in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(saved)


def scheduler_kwargs(text: str | None) -> dict:
    """``--lr_scheduler_kwargs``: a JSON object, or a JSON file holding one (as ms-swift's json_parse_to_dict)."""
    if not text:
        return {}
    source = Path(text).expanduser()
    try:
        value = json.loads(source.read_text() if source.is_file() else text)
    except (ValueError, OSError) as exc:
        raise AlignkitError(f"--lr_scheduler_kwargs {text!r}: not a JSON object or file ({exc})") from exc
    if not isinstance(value, dict):
        raise AlignkitError(f"--lr_scheduler_kwargs {text!r}: expected a JSON object, got {type(value).__name__}")
    return value


def make_scheduler(optimizer, *, kind: str, warmup: int, total: int, kwargs: dict):
    """transformers' schedule ``kind`` over ``total`` optimizer steps, ``warmup`` of them warming up linearly."""
    from transformers import get_scheduler

    # transformers' "constant" ignores warm-up; users who ask for warm-up with it mean this one.
    kind = "constant_with_warmup" if kind == "constant" and warmup else kind
    try:
        return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                             scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise AlignkitError(f"--lr_scheduler_type {kind} --lr_scheduler_kwargs {json.dumps(kwargs)}: {exc}") from exc


def check_schedule(kind: str, kwargs: dict) -> None:
    """Build the schedule once on a throw-away optimizer, so wrong --lr_scheduler_kwargs stop the run before
    any data or model is loaded."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    make_scheduler(probe, kind=kind, warmup=1, total=10, kwargs=kwargs)


def learning_rate(optimizer, scheduler) -> float:
    """The current learning rate (the plateau schedule keeps it in the optimizer, as transformers reads it)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return float(optimizer.param_groups[0]["lr"])
    return float(scheduler.get_last_lr()[0])
