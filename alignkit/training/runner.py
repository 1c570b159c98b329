"""The shell every training loop runs in: the offline loop (SFT, DPO, KTO, RM, ... and vision) and the
online loop (PPO, GRPO) keep only their step; everything a run guarantees is written here once.

- the Accelerator with the sharding engine (DDP across processes, DeepSpeed or FSDP through accelerate),
  and the trained model prepared for it;
- the optimizer and learning-rate schedule, and one update (clip, skip if non-finite, step, schedule);
- the run directory, made once on the main process (or the resumed run's, its log trimmed);
- resume: weights, optimizer, schedule, RNG and where the loop was;
- metrics and progress on the main process only, checkpoints written by the main process only;
- SIGINT/SIGTERM: finish the step, save, exit; too many non-finite steps in a row stop the run;
- when to log, evaluate and save, the best checkpoint, early stopping (``alignkit.training.cadence``), the
  trackers (``trackers``), the optimizer and schedule by name (``optimizers``), NEFTune (``neftune``), LISA's
  layer draws (``lisa``: ``begin_step`` before each step's first forward);
  the settings come from the flags through ``loop_config``.

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
import shutil
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
from alignkit.models.liger import check_liger_available
from alignkit.models.load import model_max_length, resolve_dtype
from alignkit.models.placement import place
from alignkit.models.weights import load_model_weights
from alignkit.training import cadence
from alignkit.training.checkpoint import TrainerState, list_checkpoints, load_checkpoint, new_run_dir, save_checkpoint
from alignkit.training.distributed import launched, on_main, process_state
from alignkit.training.galore import schedule_stretch
from alignkit.training.interrupts import StopRequests
from alignkit.training.lisa import LayerSwitch
from alignkit.training.loop_config import LoopConfig, check_loop_flags, loop_config
from alignkit.training.metrics_log import MetricsLog, RunningMean
from alignkit.training.optimizers import PLATEAU, make_optimizer, make_scheduler
from alignkit.training.resume import check_resume_args, find_checkpoint, resume_run_dir
from alignkit.training.sequence_parallel import check_sequence_parallel
from alignkit.training.sequence_parallel import enable as enable_sequence_parallel
from alignkit.training.sharding import Engine, check_available, resolve_engine
from alignkit.training.trackers import make_trackers

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class RunStart:
    """What a run settles from its flags before any data or model is loaded."""

    resume: Path | None  # the checkpoint --resume_from_checkpoint names (last | run dir | checkpoint)
    precision: str  # fp32 | bf16 | fp16
    engine: Engine | None  # DeepSpeed / FSDP through accelerate; None: DDP across processes, or one process
    method: str | None = None  # "sft" or the --rlhf_type

    def check_engine(self) -> None:
        """Stop now if the engine cannot run here (no GPU, package missing); callers first check their own
        flag combinations, whose messages say more."""
        if self.engine is not None:
            check_available(self.engine)
            logger.info("Engine: %s (%s)", self.engine.kind, self.engine.source)


def start_run(args: RunArguments, method: str | None = None, *, join: bool = True) -> RunStart:
    """The checkpoint to resume from, the precision and the sharding engine of any training run: the
    offline methods, vision-language rows and ppo/grpo alike, so a flag means the same for all of them.
    The loop's flags (cadence, best metric, optimizer, schedule, trackers) are checked here too, before any
    data or model is loaded."""
    resume = find_checkpoint(args.resume_from_checkpoint, args.output_dir) if args.resume_from_checkpoint else None
    torch.manual_seed(args.seed)
    # --torch_dtype loads the weights in its precision and computes in it; --dtype only sets the compute's.
    weights_set = args.torch_dtype not in (None, "auto")
    flag, value = ("--torch_dtype", args.torch_dtype) if weights_set else ("--dtype", args.dtype)
    precision = resolve_dtype(value)
    if precision == "fp16" and not torch.cuda.is_available():
        raise AlignkitError(f"{flag} {value} needs a GPU; on CPU use fp32 or bf16")
    if args.use_liger_kernel:
        check_liger_available()
    check_sequence_parallel(args.sequence_parallel_size, int(os.environ.get("WORLD_SIZE", "1")))
    engine = resolve_engine(deepspeed=args.deepspeed, fsdp=args.fsdp, plugin=args.plugin, tp=args.tp, pp=args.pp,
                            sp=args.sp, batch_size=args.per_device_train_batch_size,
                            gradient_accumulation_steps=args.gradient_accumulation_steps,
                            max_grad_norm=args.max_grad_norm, precision=precision, fsdp_config=args.fsdp_config)
    check_loop_flags(args, method)
    if join:
        join_process_group(args)
    return RunStart(resume, precision, engine, method)


def join_process_group(args: RunArguments) -> None:
    """Join the launcher's process group once, with --ddp_timeout (``start_run(join=False)`` callers do it after
    their own flag checks, so that a refused flag stops every process at once instead of in the group)."""
    if launched():
        process_state(timeout=args.ddp_timeout)


def loop_config_for(args: RunArguments, start: RunStart) -> LoopConfig:
    return dataclasses.replace(loop_config(args, start.precision, start.method),
                               resume_from_checkpoint=str(start.resume) if start.resume else None,
                               engine=start.engine.accelerator_kwargs() if start.engine else None,
                               activation_cpu_offload=bool(start.engine and start.engine.activation_cpu_offload))


def with_fit_defaults(args: RunArguments, model_path: str) -> RunArguments:
    """``args`` with --gradient_checkpointing and --max_length filled in where unset (config.defaults.fit_defaults:
    on with a GPU as ms-swift, the model's own length), logged; runtime code then reads plain values and the run's
    args.json records what ran."""
    limit = model_max_length(model_path, args.model_revision) if args.max_length is None else None
    return dataclasses.replace(args, **fit_defaults(args, on_gpu=torch.cuda.is_available(), model_max_length=limit))


def rows_per_step(args: RunArguments) -> int:
    """Rows in one optimizer step: per-device batch × accumulation × processes (WORLD_SIZE, as the launchers
    set it; the run's args.json records the same)."""
    # A sequence-parallel group of processes trains on the same rows (alignkit.training.sequence_parallel).
    processes = int(os.environ.get("WORLD_SIZE", "1")) // max(args.sequence_parallel_size, 1)
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(processes, 1)


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


def make_accelerator(config: LoopConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    # accelerate keeps its settings in a process-wide singleton; a second run in the same process (the
    # Python API, the demo, tests) may ask for another precision, so start from a clean state.
    AcceleratorState._reset_state()
    handlers = []
    # LISA's frozen layers get no gradients, which DDP must expect (its buckets hold every layer).
    find_unused = True if config.lisa is not None else config.ddp_find_unused_parameters
    if find_unused is not None:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=find_unused))
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=handlers, **(config.engine or {}))


class Runner:
    """One training run's shared machinery (see the module docstring). ``config`` is a LoopConfig."""

    def __init__(self, config, run_dir: Path, *, args_for_checkpoint: dict, tokenizer,
                 row_sources: list | None = None):
        self.config = config
        self.run_dir = run_dir
        self.args_for_checkpoint = args_for_checkpoint
        self.tokenizer = tokenizer
        self.row_sources = row_sources
        self.accelerator = make_accelerator(config)
        self.main = self.accelerator.is_main_process
        self.state = TrainerState()
        self.last_checkpoint: Path | None = None
        self.model = self.optimizer = self.scheduler = None
        self.saved_model = None  # what a checkpoint saves (has save_pretrained)
        self.layer_switch = None  # LISA's (alignkit/training/lisa.py)
        self._warned_optimizer_shards = False
        self.should_stop = False  # early stop or --max_epochs: the loops leave at the end of this step
        self.stopped_early = False  # by --early_stop_interval: nothing more is evaluated or saved
        self.evaluated_at = self.saved_at = None  # the step last evaluated / saved
        torch.manual_seed(config.seed)

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def data_processes(self) -> int:
        """Processes that take different rows: a sequence-parallel group (consecutive ranks) shares its rows."""
        return self.num_processes // self.config.sequence_parallel_size

    @property
    def data_rank(self) -> int:
        return self.rank // self.config.sequence_parallel_size

    def prepare(self, model, *, optimizer_steps: int, saved_model=None):
        """Place ``model``, build its optimizer and schedule over ``optimizer_steps``, and wrap it for the
        sharding engine (DDP across processes, DeepSpeed, FSDP). Returns the wrapped model, which the step's
        forward must go through; ``saved_model`` (default: the unwrapped model) is what checkpoints save."""
        config = self.config
        model = place(model, self.accelerator.device)  # a model split by --device_map stays split
        if config.neftune_noise_alpha is not None:
            from alignkit.training.neftune import activate_neftune

            activate_neftune(model, config.neftune_noise_alpha)
        optimizer = make_optimizer(model, config)
        warmup = config.warmup_steps or math.ceil(config.warmup_ratio * optimizer_steps)
        stretch = schedule_stretch(config.galore)  # ms-swift's per-parameter GaLore schedules run twice as long
        self.scheduler = make_scheduler(optimizer, kind=config.lr_scheduler_type, warmup=warmup * stretch,
                                        total=optimizer_steps * stretch, kwargs=config.lr_scheduler_kwargs)
        if config.sequence_parallel_size > 1:
            enable_sequence_parallel(model, config.sequence_parallel_size)
        # Built (and wrapped for DDP) while every layer is trainable, so each of LISA's draws has its place.
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if config.activation_cpu_offload:  # on the FSDP units, which exist once the model is prepared
            from alignkit.training.activation_offload import offload_activations

            offload_activations(self.model)
        self.saved_model = saved_model if saved_model is not None else self.unwrapped
        if config.lisa is not None:
            self.layer_switch = LayerSwitch(self.saved_model, config.lisa, seed=config.seed)
        if self.shards_parameters and self.saved_model is not self.unwrapped:
            raise AlignkitError(f"{self.engine_kind}: this method's checkpoint holds more than the trained model "
                                "(a scalar head or value model), whose sharded weights alignkit does not gather yet; "
                                "use --deepspeed zero2 (or zero0/zero1) instead")
        return self.model

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def engine_kind(self) -> str:
        stage = self.zero_stage
        if stage is not None:
            return f"DeepSpeed ZeRO-{stage}"
        return "FSDP" if self.accelerator.distributed_type == "FSDP" else "DDP"

    @property
    def zero_stage(self) -> int | None:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return plugin.zero_stage if plugin is not None else None

    @property
    def shards_parameters(self) -> bool:
        """ZeRO-3 or FSDP: the unwrapped model's parameters are this process's shards (also on one process)."""
        return self.zero_stage == 3 or self.accelerator.distributed_type == "FSDP"

    @property
    def shards_optimizer_state(self) -> bool:
        """ZeRO-1/2/3 or FSDP across processes: each process's optimizer holds its part of the state only."""
        sharded = (self.zero_stage or 0) >= 1 or self.accelerator.distributed_type == "FSDP"
        return sharded and self.num_processes > 1

    def resume(self, checkpoint: str | None, *, weights=None, load_more: Callable[[Path], None] | None = None) -> None:
        """Continue from ``checkpoint`` (already resolved by ``resume.find_checkpoint``): every process loads it.
        ``weights``: the model the checkpoint's top-level weights go into (default: the trained model);
        ``load_more``: what else the trained model holds (PPO's value model in ``value_model/``)."""
        if not checkpoint:
            return
        checkpoint = Path(checkpoint)
        if self.shards_parameters:
            raise AlignkitError(f"--resume_from_checkpoint {checkpoint}: resuming under {self.engine_kind} is not "
                                "supported yet (the weights would have to be scattered into the shards); resume "
                                "with --deepspeed zero2 or without an engine, or start from the weights with "
                                f"--model {checkpoint} (full) / --adapters {checkpoint} (LoRA)")
        self.state = load_checkpoint(checkpoint, model=weights if weights is not None else self.unwrapped,
                                     optimizer=self.optimizer, scheduler=self.scheduler)
        if load_more is not None:
            load_more(checkpoint)
        if checkpoint.parent.resolve() == self.run_dir.resolve():
            self.last_checkpoint = checkpoint  # never written again
            self.saved_at = self.state.global_step
        logger.info("Resumed from %s at step %d (epoch %d, batch %d)", checkpoint, self.state.global_step,
                    self.state.epoch, self.state.batches_done_in_epoch)

    @contextmanager
    def running(self, total_steps: int, desc: str):
        """Progress bar, metrics log and stop signals around the loop's steps; yields the StopRequests."""
        resumed = self.state.global_step > 0
        self.total_steps = total_steps
        # Only the main process logs and shows progress; every process loaded the checkpoint.
        trackers = make_trackers(self.config.trackers, self.run_dir, resumed_at=self.state.global_step if resumed
                                 else None, config=self.args_for_checkpoint) if self.main else []
        self.log = MetricsLog(self.run_dir, trackers=trackers, write_console=tqdm.write, enabled=self.main)
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

    def begin_step(self) -> None:
        """Before the step's first forward (``state.global_step`` steps done): LISA's layers for this step."""
        if self.layer_switch is not None:
            self.layer_switch.at_step(self.state.global_step)

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
            for hook in self.config.after_step:  # AdaLoRA's budget: after the update, before zero_grad
                hook(self.state.global_step + 1)
        if self.config.lr_scheduler_type != PLATEAU:  # the plateau schedule steps on evaluations
            with warnings.catch_warnings():
                # The schedule follows the step count even when the first update was skipped.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (float(grad_norm) if grad_norm is not None else None), problem

    def learning_rate(self) -> float:
        from alignkit.training.optimizers import learning_rate

        return learning_rate(self.optimizer, self.scheduler)

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
                 evaluate: Callable[[], dict] | None, log_more: Callable[[], None] | None = None,
                 epoch_end: bool = False) -> None:
        """After ``state.global_step`` was advanced (``epoch_end``: and an epoch finished): keep the step's metrics
        (None for a skipped step), log, evaluate and save as ``cadence.due`` says, track the best checkpoint,
        stop early or at --max_epochs (``should_stop``), and stop cleanly if a signal arrived on any process."""
        config, state = self.config, self.state
        if metrics is not None:
            self.running_mean.add(metrics)
        self.bar.update(1)
        due = cadence.due(config, step=state.global_step, total=self.total_steps, epoch_end=epoch_end,
                          epochs_done=state.epoch)
        if due.log:
            logged = self.running_mean.pop()
            if postfix in logged:
                self.bar.set_postfix({postfix: f"{logged[postfix]:.4f}"})
            if state.nonfinite_steps:
                logged["nonfinite_steps"] = state.nonfinite_steps
            self.log.log(state.global_step, {**logged, **log_extra})
            if log_more is not None and self.main:
                log_more()
        new_best = False
        if due.evaluate and evaluate is not None:
            new_best = self._evaluate(evaluate)
        if due.save or (config.save_strategy == "best" and new_best):
            self.save()
            if cadence.early_stop(state, interval=config.early_stop_interval,
                                  greater_is_better=config.greater_is_better):
                logger.info("Stopping at step %d: %s has not improved for %d saves (--early_stop_interval)",
                            state.global_step, config.metric_for_best_model, config.early_stop_interval)
                self.should_stop = self.stopped_early = True
        if due.stop:
            logger.info("Stopping at the end of epoch %d (--max_epochs %d)", state.epoch, config.max_epochs)
            self.should_stop = True
        if self.any_process(bool(self.stop.requested)):
            self._save_once()
            # Another process may have been signalled (a launcher forwards signals to all, but not always at once).
            raise TrainingInterrupted(self.stop.requested or int(signal.SIGTERM), self.last_checkpoint,
                                      resumable=not config.save_only_model)

    def _evaluate(self, evaluate: Callable[[], dict]) -> bool:
        """Evaluate, log, and track the best metric (every process gets the main process's metrics, so all
        agree on the best checkpoint, the plateau schedule and early stopping). True for a new best."""
        from accelerate.utils import broadcast_object_list

        config = self.config
        metrics = evaluate()
        self.evaluated_at = self.state.global_step
        if self.num_processes > 1:
            box = [metrics if self.main else None]
            broadcast_object_list(box, from_process=0)
            metrics = box[0]
        self.log.log(self.state.global_step, metrics)
        new_best = cadence.update_best(self.state, metrics, metric=config.metric_for_best_model,
                                       greater_is_better=config.greater_is_better, save_strategy=config.save_strategy)
        if config.lr_scheduler_type == PLATEAU and config.metric_for_best_model in metrics:
            self.scheduler.step(metrics[config.metric_for_best_model])
        return new_best

    def finish(self, evaluate: Callable[[], dict] | None) -> Path | None:
        """The end of a run: the last step's evaluation and checkpoint where the loop has not done them yet
        (none after an early stop, which stopped at a save), the best checkpoint reported (and loaded with
        --load_best_model_at_end), and the last checkpoint returned (None with --save_strategy no). A signal
        from here on lets the run finish: nothing else is left."""
        config, state = self.config, self.state
        self.bar.close()
        if not self.stopped_early:
            if evaluate is not None and config.eval_strategy != "no" and self.evaluated_at != state.global_step:
                self._evaluate(evaluate)
            if config.save_strategy != "no":
                self._save_once()
        best = state.best_model_checkpoint
        if best and config.save_total_limit == 1 and self.main:
            self._keep_only(Path(best))  # transformers: with a limit of 1 the best checkpoint is the one kept
        if best and config.load_best_model_at_end:
            load_model_weights(self.saved_model, Path(best))
            logger.info("Loaded the best checkpoint's weights (--load_best_model_at_end)")
        logger.info("last checkpoint: %s", self.last_checkpoint)
        if config.metric_for_best_model:
            logger.info("best checkpoint: %s (%s %s)", best, config.metric_for_best_model, state.best_metric)
        if config.hub_upload and self.main:
            uploaded = Path(best) if best and config.load_best_model_at_end else self.last_checkpoint
            if uploaded is None:
                raise AlignkitError("--push_to_hub: the run wrote no checkpoint to upload (--save_strategy no)")
            from alignkit.models.hub_upload import push_to_hub

            upload = config.hub_upload
            push_to_hub(uploaded, upload["repo_id"], token=upload["token"], private=upload["private"],
                        commit_message=f"alignkit: {uploaded.name}")
        return self.last_checkpoint

    def _keep_only(self, best: Path) -> None:
        for checkpoint in list_checkpoints(self.run_dir):
            if checkpoint.resolve() != best.resolve():
                logger.info("Deleting %s: --save_total_limit 1 keeps the best checkpoint only", checkpoint)
                shutil.rmtree(checkpoint)
        if self.last_checkpoint is not None and not self.last_checkpoint.exists():
            self.last_checkpoint = best

    def _save_once(self) -> None:
        if self.config.save_strategy == "no":
            return  # not even when stopped by a signal: the run was asked to write no checkpoint
        if self.saved_at != self.state.global_step:
            self.save()

    def save(self) -> Path:
        """A checkpoint of the current step, written by the main process while the others wait. It records the
        best checkpoint so far (transformers: the checkpoint of the step that set the best metric, if saved)."""
        config, state = self.config, self.state
        state.running_metrics = self.running_mean.to_json()
        self.accelerator.wait_for_everyone()
        path = self.run_dir / f"checkpoint-{state.global_step}"
        if state.best_global_step is not None:
            best = self.run_dir / f"checkpoint-{state.best_global_step}"
            if best == path or best.is_dir():
                state.best_model_checkpoint = str(best)
        # ZeRO-3 and FSDP hold each parameter as shards: every process takes part in gathering the whole
        # weights, which the main process then writes (the unwrapped model's own tensors are shards there).
        state_dict = self.accelerator.get_state_dict(self.model) if self.shards_parameters else None
        sharded_optimizer = self.shards_optimizer_state
        if sharded_optimizer and not config.save_only_model and not self._warned_optimizer_shards:
            logger.warning("%s with %d processes: each process holds part of the optimizer state; checkpoints hold "
                           "the whole weights but no optimizer state, so a resume restarts the optimizer (AdamW "
                           "moments) and the schedule from the checkpoint's weights", self.engine_kind,
                           self.num_processes)
            self._warned_optimizer_shards = True
        if self.main:
            weights_only = config.save_only_model or sharded_optimizer
            path = save_checkpoint(self.run_dir, state, model=self.saved_model, tokenizer=self.tokenizer,
                                   optimizer=None if weights_only else self.optimizer,
                                   scheduler=self.scheduler, args=self.args_for_checkpoint,
                                   save_total_limit=config.save_total_limit, keep=state.best_model_checkpoint,
                                   state_dict=state_dict if self.saved_model is self.unwrapped else None)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        self.saved_at = state.global_step
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
        are gathered for the rollout, every process entering (training/zero3.py; other engines hold whole
        parameters)."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            yield
            return
        from alignkit.training.zero3 import whole_for_generation

        with whole_for_generation(self.model):
            yield

    @contextmanager
    def main_process_only(self):
        """Work the main process does alone (evaluation on the unwrapped model); the others wait at the end."""
        try:
            yield self.main
        finally:
            self.accelerator.wait_for_everyone()
