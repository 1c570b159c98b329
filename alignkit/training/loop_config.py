"""A run's loop settings (``LoopConfig``) from its flags, and the checks of those flags that must stop a run
before any data or model is loaded: the cadence and best metric (``cadence``), the optimizer and schedule
(``optimizers``), the trackers (``trackers``). ms-swift's defaults that depend on other flags are applied here:
--eval_strategy and --eval_steps follow --save_strategy and --save_steps; --metric_for_best_model per method
(``config.defaults``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from alignkit.config.defaults import best_model_metric
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError
from alignkit.training import cadence
from alignkit.training.galore import GaloreSettings, galore_settings
from alignkit.training.lisa import LisaSettings, lisa_settings
from alignkit.training.optimizers import PLATEAU, check_optimizer, check_schedule, scheduler_kwargs
from alignkit.training.trackers import TrackerSettings, check_swanlab, resolve_report_to

logger = logging.getLogger("alignkit")


@dataclass
class LoopConfig:
    num_train_epochs: float = 1.0
    hub_upload: dict | None = None  # --push_to_hub: {"repo_id", "token", "private"}; None: no upload
    max_steps: int = -1
    batch_size: int = 1
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    optim: str = "adamw_torch_fused"
    optim_args: str | None = None
    optimizer: str | None = None  # ms-swift's optimizer plugin (muon); takes precedence over optim
    galore: GaloreSettings | None = None  # --use_galore: alignkit/training/galore.py
    lisa: LisaSettings | None = None  # --lisa_activated_layers: alignkit/training/lisa.py
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: dict = field(default_factory=dict)
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    # When to log, evaluate and save (alignkit.training.cadence): steps | epoch | no (save also best).
    logging_strategy: str = "steps"
    logging_steps: int = 5
    logging_first_step: bool = True
    eval_strategy: str = "steps"
    eval_steps: int | None = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    metric_for_best_model: str | None = None  # with the eval_ prefix; None: no best checkpoint is tracked
    greater_is_better: bool = False
    load_best_model_at_end: bool = False
    early_stop_interval: int | None = None
    max_epochs: int | None = None
    seed: int = 42
    sequence_parallel_size: int = 1  # processes that split each sequence's tokens (training/sequence_parallel.py)
    shuffle: bool = True
    drop_last: bool = False  # --dataloader_drop_last
    group_by_length: bool = False
    neftune_noise_alpha: float | None = None
    mixed_precision: str = "no"  # no | bf16 | fp16
    trackers: TrackerSettings = field(default_factory=lambda: TrackerSettings(report_to=()))
    resume_from_checkpoint: str | None = None
    max_nonfinite_steps: int = 10
    ddp_find_unused_parameters: bool | None = None
    ddp_timeout: int | None = None  # seconds; None: torch's default
    engine: dict | None = (
        None  # Accelerator keyword arguments from alignkit.training.sharding (DeepSpeed / FSDP plugins)
    )
    activation_cpu_offload: bool = False  # FSDP's saved activations in CPU memory (training.activation_offload)
    # (name, parameter) -> its learning rate, where parameters differ (LoRA+, --vit_lr, --aligner_lr; set by
    # alignkit.training.model_setup.loop_additions); None: all at learning_rate. after_step: called with the
    # step's number after each applied update (AdaLoRA's budget allocation).
    learning_rate_of: Callable | None = None
    after_step: tuple = ()


def loop_config(args: RunArguments, precision: str, method: str | None = None) -> LoopConfig:
    """The loop's settings from the flags; ``method`` ("sft" or the --rlhf_type) picks the default
    --metric_for_best_model (alignkit/config/defaults.py)."""
    eval_strategy, eval_steps = resolve_eval(args)
    metric, greater = best_model_metric(args, method) if method else (None, False)
    return LoopConfig(
        hub_upload={"repo_id": args.hub_model_id, "token": args.hub_token, "private": args.hub_private_repo}
        if args.push_to_hub else None,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        batch_size=args.per_device_train_batch_size,
        eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_betas=(args.adam_beta1, args.adam_beta2),
        adam_epsilon=args.adam_epsilon,
        optim=args.optim,
        optim_args=args.optim_args,
        optimizer=None if args.optimizer == "default" else args.optimizer,
        galore=galore_settings(args),
        lisa=lisa_settings(args),
        lr_scheduler_type=args.lr_scheduler_type,
        lr_scheduler_kwargs=scheduler_kwargs(args.lr_scheduler_kwargs),
        warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_strategy=args.logging_strategy,
        logging_steps=args.logging_steps,
        logging_first_step=args.logging_first_step,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=args.save_strategy,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        save_only_model=args.save_only_model,
        metric_for_best_model=cadence.metric_key(metric),
        greater_is_better=greater,
        load_best_model_at_end=args.load_best_model_at_end,
        early_stop_interval=args.early_stop_interval,
        max_epochs=args.max_epochs,
        seed=args.seed,
        sequence_parallel_size=args.sequence_parallel_size,
        shuffle=args.dataset_shuffle,
        drop_last=args.dataloader_drop_last,
        group_by_length=args.group_by_length,
        neftune_noise_alpha=args.neftune_noise_alpha,
        mixed_precision={"fp32": "no"}.get(precision, precision),
        trackers=TrackerSettings(report_to=resolve_report_to(args.report_to), run_name=args.run_name,
                                 swanlab=swanlab_options(args)),
        resume_from_checkpoint=args.resume_from_checkpoint,
        max_nonfinite_steps=args.max_nonfinite_steps,
        ddp_find_unused_parameters=args.ddp_find_unused_parameters,
        ddp_timeout=args.ddp_timeout,
    )


def resolve_eval(args: RunArguments) -> tuple[str, int | None]:
    """ms-swift's evaluation cadence: --eval_strategy unset follows --save_strategy (steps for best), and
    --eval_steps unset follows --save_steps."""
    strategy = args.eval_strategy or ("steps" if args.save_strategy == "best" else args.save_strategy)
    steps = args.eval_steps if args.eval_steps is not None else (args.save_steps if strategy == "steps" else None)
    return strategy, steps


def held_out_ratio(args: RunArguments) -> float:
    """--split_dataset_ratio, or 0 with --eval_strategy no: ms-swift then trains on every row."""
    if args.eval_strategy == "no" and args.split_dataset_ratio > 0:
        logger.info("--eval_strategy no: --split_dataset_ratio %s is not held out; every row trains (as ms-swift)",
                    args.split_dataset_ratio)
        return 0.0
    return args.split_dataset_ratio


def swanlab_options(args: RunArguments) -> dict:
    return {f.name.removeprefix("swanlab_"): getattr(args, f.name) for f in dataclasses.fields(args)
            if f.name.startswith("swanlab_")}


def check_loop_flags(args: RunArguments, method: str | None) -> None:
    config = loop_config(args, "fp32", method)
    check_optimizer(config)
    check_schedule(config.lr_scheduler_type, config.lr_scheduler_kwargs)
    if "swanlab" in config.trackers.report_to:
        check_swanlab(config.trackers.swanlab)
    can_evaluate = bool(args.val_dataset) or args.split_dataset_ratio > 0
    if args.metric_for_best_model is None and config.metric_for_best_model and can_evaluate:
        logger.info("--metric_for_best_model not set: using %s's default %s (alignkit/config/defaults.py)", method,
                    config.metric_for_best_model.removeprefix("eval_"))
    cadence.check_cadence(eval_strategy=config.eval_strategy, eval_steps=config.eval_steps,
                          save_strategy=config.save_strategy, save_steps=config.save_steps,
                          metric=config.metric_for_best_model, load_best_model_at_end=config.load_best_model_at_end,
                          early_stop_interval=config.early_stop_interval, can_evaluate=can_evaluate)
    if config.lr_scheduler_type == PLATEAU and (config.metric_for_best_model is None or not can_evaluate
                                                or config.eval_strategy == "no"):
        raise AlignkitError("--lr_scheduler_type reduce_lr_on_plateau lowers the learning rate when the evaluation "
                            "metric (--metric_for_best_model) stops improving, so it needs held-out data "
                            "(--val_dataset or --split_dataset_ratio), an --eval_strategy other than no and a "
                            "metric; choose another schedule otherwise")
