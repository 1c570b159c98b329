"""The shell every training loop runs in: the offline loop (SFT, DPO, KTO, RM, ... and vision) and the
online loop (PPO, GRPO) keep only their step; everything a run guarantees is written here once.

- the Accelerator with the sharding engine (DDP across processes, DeepSpeed or FSDP through accelerate),
  and the trained model prepared for it;
- the optimizer and learning-rate schedule, and one update (clip, skip if non-finite, step, schedule);
- the run directory, made once on the main process (or the resumed run's, its log trimmed);
- resume: weights, optimizer, schedule, RNG and where the loop was;
- metrics and progress on the main process only, checkpoints written by the main process only;
- SIGINT/SIGTERM: finish the step, save, exit; too many non-finite steps in a row stop the run.

A loop reads: ``runner = Runner(...)``; ``model = runner.prepare(model, optimizer_steps)``;
``runner.resume(...)``; ``with runner.running(total, desc) as stop:`` its steps, each ending in
``runner.end_step(...)``; ``runner.finish(...)``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignkit.config.defaults import fit_defaults
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError, TrainingInterrupted
from alignkit.models.load import model_max_length, resolve_dtype
from alignkit.models.placement import place
from alignkit.training.checkpoint import TrainerState, load_checkpoint, new_run_dir, save_checkpoint
from alignkit.training.distributed import on_main
from alignkit.training.interrupts import StopRequests
from alignkit.training.metrics_log import MetricsLog, RunningMean
from alignkit.training.resume import check_resume_args, find_checkpoint, resume_run_dir
from alignkit.training.sharding import Engine, check_available, resolve_engine

logger = logging.getLogger("alignkit")


@dataclass
class LoopConfig:
    num_train_epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 1
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    logging_steps: int = 5
    eval_steps: int | None = None
    save_steps: int = 500
    save_total_limit: int | None = None
    seed: int = 42
    shuffle: bool = True
    mixed_precision: str = "no"  # no | bf16 | fp16
    tensorboard: bool = True
    resume_from_checkpoint: str | None = None
    max_nonfinite_steps: int = 10
    engine: dict | None = (
        None  # Accelerator keyword arguments from alignkit.training.sharding (DeepSpeed / FSDP plugins)
    )


def loop_config(args: RunArguments, precision: str) -> LoopConfig:
    return LoopConfig(
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        batch_size=args.per_device_train_batch_size,
        eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        adam_betas=(args.adam_beta1, args.adam_beta2),
        adam_epsilon=args.adam_epsilon,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        eval_steps=args.eval_steps,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        shuffle=args.dataset_shuffle,
        mixed_precision={"fp32": "no"}.get(precision, precision),
        tensorboard="tensorboard" in args.report_to,
        resume_from_checkpoint=args.resume_from_checkpoint,
        max_nonfinite_steps=args.max_nonfinite_steps,
    )


@dataclass(frozen=True)
class RunStart:
    """What a run settles from its flags before any data or model is loaded."""

    resume: Path | None  # the checkpoint --resume_from_checkpoint names (last | run dir | checkpoint)
    precision: str  # fp32 | bf16 | fp16
    engine: Engine | None  # DeepSpeed / FSDP through accelerate; None: DDP across processes, or one process

    def check_engine(self) -> None:
        """Stop now if the engine cannot run here (no GPU, package missing); callers first check their own
        flag combinations, whose messages say more."""
        if self.engine is not None:
            check_available(self.engine)
            logger.info("Engine: %s (%s)", self.engine.kind, self.engine.source)


def start_run(args: RunArguments) -> RunStart:
    """The checkpoint to resume from, the precision and the sharding engine of any training run: the
    offline methods, vision-language rows and ppo/grpo alike, so a flag means the same for all of them."""
    resume = find_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    torch.manual_seed(args.seed)
    precision = resolve_dtype(args.dtype)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError("--dtype fp16 needs a GPU; on CPU use fp32 or bf16")
    engine = resolve_engine(deepspeed=args.deepspeed, fsdp=args.fsdp, plugin=args.plugin, tp=args.tp, pp=args.pp,
                            sp=args.sp, batch_size=args.per_device_train_batch_size,
                            gradient_accumulation_steps=args.gradient_accumulation_steps,
                            max_grad_norm=args.max_grad_norm, precision=precision)
    return RunStart(resume, precision, engine)


def loop_config_for(args: RunArguments, start: RunStart) -> LoopConfig:
    return dataclasses.replace(loop_config(args, start.precision),
                               resume_from_checkpoint=str(start.resume) if start.resume else None,
                               engine=start.engine.accelerator_kwargs() if start.engine else None)


def with_fit_defaults(args: RunArguments, model_path: str) -> RunArguments:
    """``args`` with --gradient_checkpointing and --max_length filled in where unset (config.defaults.fit_defaults:
    on with a GPU as ms-swift, the model's own length), logged; runtime code then reads plain values and the run's
    args.json records what ran."""
    limit = model_max_length(model_path, args.model_revision) if args.max_length is None else None
    return dataclasses.replace(args, **fit_defaults(args, on_gpu=torch.cuda.is_available(), model_max_length=limit))


def rows_per_step(args: RunArguments) -> int:
    """Rows in one optimizer step: per-device batch × accumulation × processes (WORLD_SIZE, as the launchers
    set it; the run's args.json records the same)."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", "1"))


def open_run_dir(args: RunArguments, resolved: dict, resume: Path | None) -> Path:
    """The run's directory, made once on the main process and shared with the others: a new versioned one
    with ``args.json``, or, on resume (``resolved`` checked against the checkpoint's arguments first), the
    checkpoint's own, its log trimmed to the checkpoint's step."""
    if resume is not None:
        check_resume_args(resume, resolved, allow=args.ignore_args_mismatch)

    def make() -> Path:
        if resume is not None:
            return resume_run_dir(resume, args.output_dir, resolved)
        run_dir = new_run_dir(args.output_dir)
        (run_dir / "args.json").write_text(json.dumps(resolved, indent=2, default=str))
        return run_dir

    run_dir = on_main(make)
    logger.info("Run directory: %s", run_dir)
    return run_dir


def make_accelerator(mixed_precision: str, engine: dict | None):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, the demo, tests) may ask for another precision, so start from a clean state.
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), **(engine or {}))


def make_optimizer(model, config) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # Biases and norm scales are 1-D; weight decay on them only hurts (as in transformers' Trainer).
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": config.learning_rate, "betas": config.adam_betas, "eps": config.adam_epsilon}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused kernels need a supported device and dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


class Runner:
    """One training run's shared machinery (see the module docstring). ``config`` is a LoopConfig."""

    def __init__(self, config, run_dir: Path, *, args_for_checkpoint: dict, tokenizer,
                 row_sources: list | None = None):
        self.config = config
        self.run_dir = run_dir
        self.args_for_checkpoint = args_for_checkpoint
        self.tokenizer = tokenizer
        self.row_sources = row_sources
        self.accelerator = make_accelerator(config.mixed_precision, config.engine)
        self.main = self.accelerator.is_main_process
        self.state = TrainerState()
        self.last_checkpoint: Path | None = None
        self.model = self.optimizer = self.scheduler = None
        self.saved_model = None  # what a checkpoint saves (has save_pretrained)
        torch.manual_seed(config.seed)

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def prepare(self, model, *, optimizer_steps: int, saved_model=None):
        """Place ``model``, build its optimizer and schedule over ``optimizer_steps``, and wrap it for the
        sharding engine (DDP across processes, DeepSpeed, FSDP). Returns the wrapped model, which the step's
        forward must go through; ``saved_model`` (default: the unwrapped model) is what checkpoints save."""
        from transformers import get_scheduler

        config = self.config
        model = place(model, self.accelerator.device)  # a model split by --device_map stays split
        optimizer = make_optimizer(model, config)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * optimizer_steps)
        # transformers' "constant" ignores warm-up; users who ask for warm-up with it mean this one.
        kind = "constant_with_warmup" if config.lr_scheduler_type == "constant" and warmup else config.lr_scheduler_type
        self.scheduler = get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=optimizer_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.saved_model = saved_model if saved_model is not None else self.unwrapped
        return self.model

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def resume(self, checkpoint: str | None, *, weights=None, load_more: Callable[[Path], None] | None = None) -> None:
        """Continue from ``checkpoint`` (already resolved by ``resume.find_checkpoint``): every process loads it.
        ``weights``: the model the checkpoint's top-level weights go into (default: the trained model);
        ``load_more``: what else the trained model holds (PPO's value model in ``value_model/``)."""
        if not checkpoint:
            return
        checkpoint = Path(checkpoint)
        self.state = load_checkpoint(checkpoint, model=weights if weights is not None else self.unwrapped,
                                     optimizer=self.optimizer, scheduler=self.scheduler)
        if load_more is not None:
            load_more(checkpoint)
        if checkpoint.parent.resolve() == self.run_dir.resolve():
            self.last_checkpoint = checkpoint  # never written again
        logger.info("Resumed from %s at step %d (epoch %d, batch %d)", checkpoint, self.state.global_step,
                    self.state.epoch, self.state.batches_done_in_epoch)

    @contextmanager
    def running(self, total_steps: int, desc: str):
        """Progress bar, metrics log and stop signals around the loop's steps; yields the StopRequests."""
        resumed = self.state.global_step > 0
        self.total_steps = total_steps
        # Only the main process logs and shows progress; every process loaded the checkpoint.
        self.log = MetricsLog(self.run_dir, tensorboard=self.config.tensorboard and self.main, write_console=tqdm.write,
                              purge_step=self.state.global_step + 1 if resumed else None, enabled=self.main)
        self.running_mean = RunningMean.from_json(self.state.running_metrics)
        self.bar = tqdm(total=total_steps, initial=self.state.global_step, desc=desc, dynamic_ncols=True,
                        disable=not self.main)
        try:
            with StopRequests() as stop:
                self.stop = stop
                yield stop
        finally:
            self.bar.close()
            self.log.close()

    def update(self, parameters, problem: tuple[str, list[int]] | None = None, *, row_ids: list[int] = ()):
        """One optimizer update from the accumulated gradients: clip, skip it if the loss (``problem``) or the
        gradient norm is not finite, step, advance the schedule either way. ``row_ids`` name the step's rows in
        the message. Returns (grad norm, or None where the engine clips itself; problem or None)."""
        grad_norm = None
        if problem is None:
            max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
            grad_norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
            # fp16's gradient scaler skips overflowing steps itself (and lowers its scale).
            if (
                grad_norm is not None
                and not torch.isfinite(torch.as_tensor(grad_norm))
                and self.accelerator.scaler is None
            ):
                problem = (f"non-finite gradient norm ({float(grad_norm)})", list(row_ids))
        if problem is None:
            self.optimizer.step()
            self.state.nonfinite_in_a_row = 0
        with warnings.catch_warnings():
            # The schedule follows the step count even when the first update was skipped.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (float(grad_norm) if grad_norm is not None else None), problem

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def skip_nonfinite(self, problem: tuple[str, list[int]]) -> None:
        """Count and log a step whose update was skipped; stop the run after --max_nonfinite_steps in a row.

        One bad row (an overflow, an empty answer in a custom loss) should cost one step, not the run; a model
        that produces NaN every step should stop the run with a message rather than burn the budget."""
        what, row_ids = problem
        state, sources, limit = self.state, self.row_sources, self.config.max_nonfinite_steps
        state.nonfinite_steps += 1
        state.nonfinite_in_a_row += 1
        names = [f"{i} ({sources[i].file} row {sources[i].row})" if sources and sources[i] else str(i) for i in row_ids]
        logger.warning("step %d: %s; update skipped (%d in a row, %d in total). Rows: %s", state.global_step, what,
                       state.nonfinite_in_a_row, state.nonfinite_steps, ", ".join(names))
        self.log.log(
            state.global_step, {"nonfinite": what, "row_ids": list(row_ids), "nonfinite_steps": state.nonfinite_steps}
        )
        if state.nonfinite_in_a_row >= limit:
            self.log.close()
            raise AlignkitError(
                f"stopped at step {state.global_step}: {state.nonfinite_in_a_row} optimizer steps in a row had a "
                f"non-finite loss or gradient (--max_nonfinite_steps {limit}); their updates were skipped, so the "
                f"weights stay finite. Last checkpoint: {self.last_checkpoint or 'none'}. Lower --learning_rate or "
                "check the rows named above.")

    def end_step(self, metrics: dict[str, float] | None, *, log_extra: dict, postfix: str,
                 evaluate: Callable[[], dict] | None, log_more: Callable[[], None] | None = None) -> None:
        """After ``state.global_step`` was advanced: keep the step's metrics (None for a skipped step), log,
        evaluate and save on their cadence, and stop cleanly if a signal arrived on any process."""
        config, state = self.config, self.state
        if metrics is not None:
            self.running_mean.add(metrics)
        self.bar.update(1)
        if state.global_step % config.logging_steps == 0 or state.global_step == self.total_steps:
            logged = self.running_mean.pop()
            if postfix in logged:
                self.bar.set_postfix({postfix: f"{logged[postfix]:.4f}"})
            if state.nonfinite_steps:
                logged["nonfinite_steps"] = state.nonfinite_steps
            self.log.log(state.global_step, {**logged, **log_extra})
            if log_more is not None and self.main:
                log_more()
        if config.eval_steps and state.global_step % config.eval_steps == 0 and evaluate is not None:
            self.log.log(state.global_step, evaluate())
        if state.global_step % config.save_steps == 0 and state.global_step < self.total_steps:
            self.save()
        if self.any_process(bool(self.stop.requested)):
            self._save_once()
            # Another process may have been signalled (a launcher forwards signals to all, but not always at once).
            raise TrainingInterrupted(self.stop.requested or int(signal.SIGTERM), self.last_checkpoint)

    def finish(self, evaluate: Callable[[], dict] | None) -> Path:
        """The final evaluation and checkpoint. A signal from here on lets the run finish: nothing else is left."""
        self.bar.close()
        if evaluate is not None:
            self.log.log(self.state.global_step, evaluate())
        self._save_once()
        logger.info("last checkpoint: %s", self.last_checkpoint)
        return self.last_checkpoint

    def _save_once(self) -> None:
        if self.last_checkpoint is None or self.last_checkpoint.name != f"checkpoint-{self.state.global_step}":
            self.save()

    def save(self) -> Path:
        """A checkpoint of the current step, written by the main process while the others wait."""
        self.state.running_metrics = self.running_mean.to_json()
        self.accelerator.wait_for_everyone()
        path = self.run_dir / f"checkpoint-{self.state.global_step}"
        if self.main:
            path = save_checkpoint(self.run_dir, self.state, model=self.saved_model, tokenizer=self.tokenizer,
                                   optimizer=self.optimizer, scheduler=self.scheduler, args=self.args_for_checkpoint,
                                   save_total_limit=self.config.save_total_limit)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def sum_over_processes(self, values: torch.Tensor) -> torch.Tensor:
        if self.num_processes == 1:
            return values
        return self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum").cpu()

    def any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on one, so all take the same branch (or they hang)."""
        return bool(self.sum_over_processes(torch.tensor([float(flag)])).item() > 0)

    def mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the processes (every process has the same keys)."""
        if self.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        summed = self.sum_over_processes(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        return {k: v / self.num_processes for k, v in zip(keys, summed.tolist())}

    @contextmanager
    def whole_parameters(self):
        """Generation needs every parameter whole; DeepSpeed ZeRO-3 keeps each process's shard only, so they
        are gathered for the rollout (DeepSpeed's own context; other engines hold whole parameters)."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            yield

    @contextmanager
    def main_process_only(self):
        """Work the main process does alone (evaluation on the unwrapped model); the others wait at the end."""
        try:
            yield self.main
        finally:
            self.accelerator.wait_for_everyone()
