"""Resuming a run: which checkpoint, whether it belongs to this run, and where the run goes on.

``--resume_from_checkpoint`` takes a checkpoint directory, a run directory (its newest complete
checkpoint) or ``last`` (the newest complete checkpoint of the newest run under ``--output_dir`` that
has one). Incomplete or corrupt checkpoints are named and skipped when searching; named directly,
they are refused.

The run continues in the checkpoint's run directory: ``logging.jsonl`` keeps the records up to the
checkpoint's step and grows from there, and no existing checkpoint is overwritten. When the run
directory already holds later checkpoints (resuming from an older one), the resumed run gets a new
run directory under ``--output_dir`` instead, starting with the old log up to the checkpoint.

Flags that change what a step computes (data, model, learning rate, batch sizes, seed, algorithm, ...)
must match the checkpoint's ``args.json``; the tokenised training data must hash the same.
``--ignore_args_mismatch`` resumes anyway, listing the differences as a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from array import array
from pathlib import Path

from alignkit.config.run import RunArguments
from alignkit.data.template import Encoded
from alignkit.errors import AlignkitError
from alignkit.training.checkpoint import (
    CHECKPOINT_PATTERN,
    STATE_FILE,
    checkpoint_step,
    is_weights_only,
    list_checkpoints,
    new_run_dir,
    run_dirs,
    verify_checkpoint,
)

logger = logging.getLogger("alignkit")

LAST = "last"
# A run's records, one JSON object per line with its "step": metrics, the online methods' completions, and
# --predict_with_generate's held-out answers.
LOGS = ("logging.jsonl", "completions.jsonl", "predict.jsonl")

# Flags that only change where and how often things are written or checked, never the weights a step
# produces (declared with the flag, ``may_differ_on_resume``). Every other flag, and ones added later, must
# match the checkpoint's.
MAY_DIFFER = frozenset(f.name for f in dataclasses.fields(RunArguments) if f.metadata.get("may_differ_on_resume"))


def find_checkpoint(spec: str, output_dir: str) -> Path:
    """The checkpoint ``--resume_from_checkpoint spec`` names (see the module docstring); one written with
    --save_only_model is refused, since it cannot continue the run exactly."""
    checkpoint = _find_checkpoint(spec, output_dir)
    if is_weights_only(checkpoint):
        lora = (checkpoint / "adapter_config.json").is_file()
        flag = f"--adapters {checkpoint}" if lora else f"--model {checkpoint}"
        raise AlignkitError(
            f"--resume_from_checkpoint {spec}: {checkpoint} was saved with --save_only_model: it holds the "
            f"{'LoRA adapter' if lora else 'model weights'} but no optimizer, learning-rate schedule or RNG state, "
            f"so the run cannot continue exactly where it stopped. To train on from these weights, start a new run "
            f"with {flag} (a fresh optimizer and schedule); to make runs resumable, leave --save_only_model off.")
    return checkpoint


def _find_checkpoint(spec: str, output_dir: str) -> Path:
    root = Path(output_dir if spec == LAST else spec).expanduser()
    flag = f"--resume_from_checkpoint {spec}"
    if spec != LAST and (
        root.name.endswith(".tmp") or CHECKPOINT_PATTERN.match(root.name) or (root / STATE_FILE).exists()
    ):
        problem = verify_checkpoint(root)
        if problem:
            hint = _newest_good(root.parent) if root.parent.is_dir() else None
            raise AlignkitError(
                f"{flag}: {problem}" + (f"; the newest complete checkpoint there is {hint}" if hint else "")
            )
        return root
    if not root.is_dir():
        where = f"--output_dir {output_dir}" if spec == LAST else flag
        raise AlignkitError(f"{where}: no such directory, so there is no checkpoint to resume from")
    runs = [root] if _is_run_dir(root) else run_dirs(root)
    for run in runs:
        found = _newest_good(run)
        if found:
            return found
    raise AlignkitError(f"{flag}: no complete checkpoint under {root}")


def _is_run_dir(path: Path) -> bool:
    return (path / "args.json").is_file() or any(p.name.startswith("checkpoint-") for p in path.iterdir())


def _newest_good(run_dir: Path) -> Path | None:
    for checkpoint in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("Skipping %s: %s", checkpoint, problem)
    return None


def data_fingerprint(rows: list) -> str:
    """sha256 of the tokenised training rows (ids, token ids, labels) in order: equal data, equal hash."""
    digest = hashlib.sha256()

    def update(item) -> None:
        if isinstance(item, (tuple, list)):
            for part in item:
                update(part)
        elif isinstance(item, Encoded):
            digest.update(array("q", item.input_ids).tobytes())
            digest.update(array("q", item.labels).tobytes())
        else:
            digest.update(repr(item).encode())

    update(rows)
    return digest.hexdigest()


def check_resume_args(checkpoint: Path, current: dict, *, allow: bool) -> None:
    """Refuse (or, with ``allow``, warn about) flags that differ from the checkpoint's and change the run."""
    try:
        saved = json.loads((checkpoint / "args.json").read_text())
    except (OSError, ValueError) as exc:
        raise AlignkitError(f"--resume_from_checkpoint {checkpoint}: args.json is unreadable ({exc})") from exc
    current = json.loads(json.dumps(current, default=str))  # tuples → lists, as they were saved
    flags = {f.name for f in dataclasses.fields(RunArguments)}
    differences = [
        f"  {'--' if key in flags else ''}{key}: {_short(saved[key])} in the checkpoint, {_short(current[key])} now"
        for key in sorted(saved.keys() & current.keys())
        if key not in MAY_DIFFER and saved[key] != current[key]
    ]
    if not differences:
        return
    listing = "\n".join(differences)
    if allow:
        logger.warning(
            "Resuming despite settings that differ from %s (--ignore_args_mismatch):\n%s", checkpoint, listing
        )
        return
    raise AlignkitError(
        f"--resume_from_checkpoint {checkpoint}: this run's settings differ from the checkpoint's, so it would "
        f"not continue the same run (train_rows / train_data_sha256 are the tokenised training data):\n{listing}\n"
        "Pass the checkpoint's values, or add --ignore_args_mismatch true to resume anyway."
    )


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resume_run_dir(checkpoint: Path, output_dir: str, args: dict) -> Path:
    """The run directory a resumed run writes to (see the module docstring)."""
    run_dir = checkpoint.parent
    step = checkpoint_step(checkpoint)
    later = [p.name for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    if (run_dir / "args.json").is_file() and not later:
        for leftover in sorted(run_dir.glob("checkpoint-*")):
            if leftover.is_dir() and leftover.name.endswith((".tmp", ".deleting")):
                logger.warning("Removing %s, left by a run that stopped while writing it", leftover)
                shutil.rmtree(leftover)
        for log in LOGS:
            _copy_log(run_dir / log, run_dir / log, step)
        logger.info("Resuming in %s from step %d", run_dir, step)
        return run_dir
    new = new_run_dir(output_dir)
    (new / "args.json").write_text(json.dumps({**args, "resumed_from": str(checkpoint)}, indent=2, default=str))
    for log in LOGS:
        _copy_log(run_dir / log, new / log, step)
    reason = (
        f"{run_dir} already has later checkpoints ({', '.join(later)})"
        if later
        else f"{run_dir} is not a run directory"
    )
    logger.info("Resuming from %s in a new run directory %s, since %s", checkpoint, new, reason)
    return new


def _copy_log(source: Path, target: Path, step: int) -> None:
    """Keep the records up to ``step``: the ones after it belong to steps the resumed run does again."""
    if not source.is_file():
        return
    lines = source.read_text().splitlines()
    kept = [line for line in lines if _record_step(line) <= step]
    if source == target and len(kept) != len(lines):
        logger.info("%s: dropping %d records after step %d, which are run again", source, len(lines) - len(kept), step)
    partial = target.with_name(target.name + ".tmp")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, target)


def _record_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a last line cut short by the kill
