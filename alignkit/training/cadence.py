"""When a run logs, evaluates and saves, which checkpoint is the best, and when it stops early: the
``--*_strategy`` flags, ``--metric_for_best_model``, ``--early_stop_interval`` and ``--max_epochs`` with
transformers' and ms-swift's semantics, for the offline and the online loop alike (both call
``Runner.end_step``, which asks ``due``).

- steps: every N steps (``--logging_steps``, ``--eval_steps``, ``--save_steps``); epoch: when an epoch ends;
  no: never. transformers' ``DefaultFlowCallback``; the first step is logged with ``--logging_first_step``.
- save ``best``: after an evaluation that improved ``--metric_for_best_model`` (transformers).
- The last step is always evaluated and saved unless the strategy is ``no`` (ms-swift's
  ``DefaultFlowCallbackNew``); so is the end of the epoch that reaches ``--max_epochs``, where the run stops.
- The best metric is tracked at each evaluation; the best checkpoint is the one of the step that set it,
  if that step was saved (transformers' ``_determine_best_metric`` / ``_save_checkpoint``).
- ``--early_stop_interval N``: at each save, if the best metric has not improved since the previous save,
  count one; N in a row stop the run (ms-swift's ``EarlyStopCallback``, which counts saves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from alignkit.errors import AlignkitError

STRATEGIES = ("steps", "epoch", "no")
SAVE_STRATEGIES = (*STRATEGIES, "best")


@dataclass(frozen=True)
class Due:
    log: bool
    evaluate: bool
    save: bool
    stop: bool  # --max_epochs reached


def due(config, *, step: int, total: int, epoch_end: bool, epochs_done: int) -> Due:
    """What the step that just ended (``step``, of ``total``) must do. ``config`` is a LoopConfig;
    ``epoch_end``: this step finished an epoch, ``epochs_done`` counting it."""
    last = step >= total
    stop = bool(epoch_end and config.max_epochs is not None and epochs_done >= config.max_epochs)
    log = (config.logging_first_step and step == 1) or _on(config.logging_strategy, config.logging_steps, step,
                                                            epoch_end)
    if config.logging_strategy == "steps" and last:
        log = True  # the last step's metrics are never left unlogged
    evaluate = _on(config.eval_strategy, config.eval_steps, step, epoch_end)
    save = _on(config.save_strategy, config.save_steps, step, epoch_end)
    if last or stop:  # ms-swift evaluates and saves the end of a run unless told "no"
        evaluate = evaluate or config.eval_strategy != "no"
        save = save or config.save_strategy != "no"
    return Due(log, evaluate, save, stop)


def _on(strategy: str, every: int | None, step: int, epoch_end: bool) -> bool:
    if strategy == "steps":
        return bool(every) and step % every == 0
    return strategy == "epoch" and epoch_end


def metric_key(metric: str | None) -> str | None:
    """transformers' spelling: ``loss`` → ``eval_loss``; a name already starting with ``eval_`` is kept."""
    if metric is None:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def update_best(state, metrics: dict[str, float], *, metric: str | None, greater_is_better: bool,
                save_strategy: str) -> bool:
    """Track the best value of ``metric`` (already ``eval_``-prefixed) in ``state`` (a TrainerState) after an
    evaluation; True when this evaluation set a new best."""
    if metric is None or not metrics:
        return False
    if metric not in metrics:
        raise AlignkitError(
            f"--metric_for_best_model {metric.removeprefix('eval_')}: the evaluation has no {metric}; it reports "
            f"{', '.join(sorted(metrics))}. Choose one of them (the eval_ prefix is optional).")
    value = float(metrics[metric])
    if not math.isfinite(value):
        return False
    better = state.best_metric is None or (value > state.best_metric if greater_is_better
                                           else value < state.best_metric)
    if better:
        state.best_metric = value
        if save_strategy != "no":
            state.best_global_step = state.global_step
    return better


def early_stop(state, *, interval: int | None, greater_is_better: bool) -> bool:
    """ms-swift's early stop, called at each save: True when ``interval`` saves in a row found no better
    ``best_metric`` than the one remembered at the save before."""
    if not interval or state.best_metric is None:
        return False
    remembered = state.early_stop_best
    improved = remembered is None or (state.best_metric > remembered if greater_is_better
                                      else state.best_metric < remembered)
    if improved:
        state.early_stop_best, state.early_stop_count = state.best_metric, 0
    else:
        state.early_stop_count += 1
    return state.early_stop_count >= interval


def check_cadence(*, eval_strategy: str, eval_steps: int | None, save_strategy: str, save_steps: int,
                  metric: str | None, load_best_model_at_end: bool, early_stop_interval: int | None,
                  can_evaluate: bool) -> None:
    """The combinations transformers and ms-swift refuse, refused before any data or model is loaded.
    ``can_evaluate``: the run has held-out data (--val_dataset or --split_dataset_ratio)."""
    needs_metric = [flag for flag, on in (("--save_strategy best", save_strategy == "best"),
                                          ("--load_best_model_at_end", load_best_model_at_end),
                                          ("--early_stop_interval", bool(early_stop_interval))) if on]
    for flag in needs_metric:
        if metric is None:
            raise AlignkitError(f"{flag} needs --metric_for_best_model (ppo has no default metric)")
        if eval_strategy == "no" or not can_evaluate:
            raise AlignkitError(f"{flag} picks checkpoints by an evaluation metric, but nothing is evaluated: give "
                                "held-out data (--val_dataset or --split_dataset_ratio) and leave --eval_strategy "
                                "at steps or epoch")
    if load_best_model_at_end and save_strategy != "best":
        if eval_strategy != save_strategy:
            raise AlignkitError(f"--load_best_model_at_end needs --eval_strategy and --save_strategy to match (they "
                                f"are {eval_strategy} and {save_strategy}), so that every saved checkpoint was "
                                "evaluated")
        if save_strategy == "steps" and eval_steps and save_steps % eval_steps:
            raise AlignkitError(f"--load_best_model_at_end needs --save_steps ({save_steps}) to be a multiple of "
                                f"--eval_steps ({eval_steps})")
